package target

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func policyDoc(app, top string) string {
	return `{"apps":{"kiosk":{"release":"1","services":{"ui":{"unit":"kiosk-ui.service"}}` + app + `}}` + top + `}`
}

// max_defer and window parse, and every bad value is refused with an error
// naming its field.
func TestParsePolicy(t *testing.T) {
	st, err := Parse([]byte(policyDoc(`,"max_defer":"90m","window":{"days":["mon","Sat"],"start":"22:00","end":"02:30","tz":"UTC"}`, `,"window":{"start":"02:00","end":"04:00"}`)))
	if err != nil {
		t.Fatal(err)
	}
	a := st.Apps["kiosk"]
	if !a.HasMaxDefer || a.MaxDefer != 90*time.Minute {
		t.Errorf("max_defer = %v (set %v), want 90m", a.MaxDefer, a.HasMaxDefer)
	}
	w := a.Window
	if w == nil || !w.Days[time.Monday] || !w.Days[time.Saturday] || w.Days[time.Sunday] || w.Start != 22*3600 || w.End != 150*60 || w.Loc != time.UTC {
		t.Fatalf("app window = %+v", w)
	}
	if st.Window == nil || st.Window.Loc != time.Local || st.WindowOf("kiosk") != w || st.WindowOf("other") != st.Window {
		t.Errorf("top window %+v, WindowOf: want the app's own first, else the target's", st.Window)
	}
	if got := w.String(); got != "mon,sat 22:00-02:30 UTC" {
		t.Errorf("String() = %q", got)
	}
	if st, err := Parse([]byte(policyDoc(`,"window":{"start":"02:00:30","end":"02:00:45"}`, ``))); err != nil || st.Apps["kiosk"].Window.Start != 7230 || st.Apps["kiosk"].Window.String() != "02:00:30-02:00:45 local time" {
		t.Errorf("a window to the second: %v", err)
	}
	if _, err := Parse([]byte(policyDoc(`,"max_defer":"0s"`, ``))); err != nil {
		t.Errorf("max_defer 0s: %v, want accepted (no bound)", err)
	}
	for _, c := range []struct{ app, top, field string }{
		{`,"max_defer":"-1m"`, ``, "apps.kiosk.max_defer"},
		{`,"max_defer":"soon"`, ``, "apps.kiosk.max_defer"},
		{`,"max_defer":60`, ``, "apps.kiosk.max_defer"},
		{`,"window":{"days":["mon","funday"],"start":"02:00","end":"04:00"}`, ``, "apps.kiosk.window.days[1]"},
		{`,"window":{"days":[],"start":"02:00","end":"04:00"}`, ``, "apps.kiosk.window.days"},
		{`,"window":{"start":"2:00","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"02:00","end":"24:00"}`, ``, "apps.kiosk.window.end"},
		{`,"window":{"start":"02:60","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"02:00:60","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"02:00:5","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"+2:00","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"02-00","end":"04:00"}`, ``, "apps.kiosk.window.start"},
		{`,"window":{"start":"02:00"}`, ``, "apps.kiosk.window.end"},
		{`,"window":{"start":"02:00","end":"02:00"}`, ``, "apps.kiosk.window.end"},
		{`,"window":{"start":"02:00","end":"04:00","tz":"Mars/Olympus"}`, ``, "apps.kiosk.window.tz"},
		{`,"window":{"start":"02:00","end":"04:00","tz":"Local"}`, ``, "apps.kiosk.window.tz"},
		{`,"window":{"start":"02:00","end":"04:00","when":"now"}`, ``, "apps.kiosk.window.when"},
		{``, `,"window":{"start":"02:00","end":"04:00","tz":"../../etc/passwd"}`, "window.tz"},
		{``, `,"window":"02:00-04:00"`, "window"},
	} {
		_, err := Parse([]byte(policyDoc(c.app, c.top)))
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Path != c.field {
			t.Errorf("%s%s: %v, want an error naming %s", c.app, c.top, err, c.field)
		}
	}
}

// Contains and Next, in a zone with DST and across midnight.
func TestWindowTimes(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("the system has no zone database (tzdata): window time zones were not tested")
	}
	w := &Window{Start: 2 * 3600, End: 4 * 3600, TZ: "Europe/Berlin", Loc: berlin}
	w.Days[time.Monday] = true
	mon := time.Date(2026, 11, 30, 3, 0, 0, 0, berlin) // a Monday
	if !w.Contains(mon) || w.Contains(mon.Add(time.Hour)) || w.Contains(mon.Add(24*time.Hour)) {
		t.Errorf("Contains around %v wrong", mon)
	}
	if got := w.Next(mon.Add(time.Hour)); !got.Equal(time.Date(2026, 12, 7, 2, 0, 0, 0, berlin)) {
		t.Errorf("Next after the window = %v, want next Monday 02:00", got)
	}
	if got := w.Next(mon); !got.Equal(mon) {
		t.Errorf("Next inside the window = %v, want now", got)
	}
	night := &Window{Start: 23 * 3600, End: 3600, Loc: time.UTC}
	night.Days[time.Friday] = true
	fri := time.Date(2026, 12, 4, 23, 30, 0, 0, time.UTC) // a Friday
	if !night.Contains(fri) || !night.Contains(fri.Add(time.Hour)) || night.Contains(fri.Add(2*time.Hour)) {
		t.Errorf("a window over midnight: Contains wrong around %v", fri)
	}
	if night.Contains(fri.Add(-24 * time.Hour).Add(time.Hour)) {
		t.Errorf("a window opening on friday is open early on friday")
	}
	if !strings.Contains(night.String(), "fri 23:00-01:00") {
		t.Errorf("String() = %q", night.String())
	}
}
