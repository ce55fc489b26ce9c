package trust

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchTarget is a target state with 100 services, as a large fleet's.
func benchTarget() []byte {
	var svcs []string
	for i := range 100 {
		svcs = append(svcs, fmt.Sprintf(`"svc%03d":{"unit":"svc%03d.service","files":[{"source":"https://updates.example/kiosk/2026.11.2/svc%03d","sha256":"%064x","path":"/opt/kiosk/bin/svc%03d","mode":"0755","size":1048576}]}`, i, i, i, i, i))
	}
	return fmt.Appendf(nil, `{"version":42,"issued":%q,"expires":%q,"fleet":"kiosk-prod","apps":{"kiosk":{"release":"2026.11.2","services":{%s}}},"config":{"KIOSK_URL":"http://localhost:8080"}}`,
		t0.Add(-time.Hour).Format(time.RFC3339), t0.Add(7*24*time.Hour).Format(time.RFC3339), strings.Join(svcs, ","))
}

func benchState(b *testing.B) (State, []ed25519.PrivateKey) {
	tk := []ed25519.PrivateKey{key("b1"), key("b2"), key("b3"), key("b4"), key("b5")}
	r := makeRoot(b, rootSpec{version: 1, rootKeys: []ed25519.PrivateKey{r1}, rootTh: 1, targetKeys: tk, targetTh: 3, signedBy: []ed25519.PrivateKey{r1}})
	return stateOf(b, r), tk
}

// BenchmarkVerify: a 100-service target signed 3 of 5; compare with
// BenchmarkUnmarshalTarget, the same document through json.Unmarshal alone.
func BenchmarkVerify(b *testing.B) {
	st, tk := benchState(b)
	body := benchTarget()
	bd := signT(b, body, nil, tk[0], tk[2], tk[4])
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Verify(st, body, bd, t0, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshalTarget(b *testing.B) {
	body := benchTarget()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			b.Fatal(err)
		}
	}
}
