package docker

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
)

// TestClientOverTCP: tcp:// reaches the engine at the pinned API version,
// and an engine's error answer keeps its message and status.
func TestClientOverTCP(t *testing.T) {
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.Path)
		switch r.URL.Path {
		case "/v1.41/_ping":
			_, _ = w.Write([]byte("OK"))
		case "/v1.41/containers/busy/stop":
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"message":"cannot stop container: device or resource busy"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c, err := NewClient("tcp://" + strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	err = c.StopContainer(context.Background(), "busy", 0)
	var ae *APIError
	if !errors.As(err, &ae) || ae.StatusCode != 500 || ae.Message != "cannot stop container: device or resource busy" {
		t.Fatalf("stop: %v, want the engine's 500 and its message", err)
	}
	if want := "stop container busy: engine answered 500: cannot stop container: device or resource busy"; err.Error() != want {
		t.Errorf("error text: got %q, want %q", err, want)
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) {
		t.Errorf("a 500 matches ErrNotFound or ErrConflict")
	}
	if want := []string{"GET /v1.41/_ping", "POST /v1.41/containers/busy/stop"}; strings.Join(paths, ",") != strings.Join(want, ",") {
		t.Errorf("requests: got %v, want %v", paths, want)
	}
}

func TestDemux(t *testing.T) {
	frame := func(stream byte, s string) []byte {
		return append([]byte{stream, 0, 0, 0, 0, 0, 0, byte(len(s))}, s...)
	}
	raw := append(frame(1, "out line\n"), frame(2, "err line\n")...)
	if got := demux(raw); got != "out line\nerr line\n" {
		t.Errorf("demux: got %q", got)
	}
	if got := demux([]byte("plain text, no frames")); got != "plain text, no frames" {
		t.Errorf("demux of a raw stream: got %q", got)
	}
}

// ImageLayers lists the diff ids of every image the engine has, as its
// inspect says, untagged images included.
func TestImageLayers(t *testing.T) {
	d := needEngine(t, "the engine's image layers")
	stacks, err := d.Client.ImageLayers(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, im := range []testImage{baseImage, checkImage} {
		img, err := d.Client.InspectImage(testCtx(t), im.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(img.RootFS.Layers) == 0 || !strings.HasPrefix(img.RootFS.Layers[0], "sha256:") {
			t.Fatalf("inspect %s: RootFS.Layers %v, want diff ids", im.ID, img.RootFS.Layers)
		}
		found := false
		for _, s := range stacks {
			found = found || slices.Equal(s, img.RootFS.Layers)
		}
		if !found {
			t.Errorf("ImageLayers %v lacks the layers %v of %s", stacks, img.RootFS.Layers, im.ID)
		}
	}
}
