package target

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Window is a maintenance window (spec section 12): the days it opens on
// and the time of day it opens and closes, in a time zone. An End before
// Start spans midnight: the window opens on a listed day and closes on the
// next. Downloads happen at any time; applies only inside the window.
type Window struct {
	Days  [7]bool // indexed by time.Weekday; all true when "days" is absent
	Start int     // seconds after midnight, 0..86399
	End   int     // seconds after midnight, 0..86399, != Start
	TZ    string  // as written ("" = the device's local zone)
	Loc   *time.Location
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// parseWindow decodes {"days":[...],"start":"HH:MM","end":"HH:MM","tz":"Area/City"}.
// Time zones come from the system (time.LoadLocation): the binary carries
// no zone database of its own.
func parseWindow(path string, raw json.RawMessage) (*Window, error) {
	m, err := object(path, raw, "days", "start", "end", "tz")
	if err != nil {
		return nil, err
	}
	w := &Window{}
	if d, ok := m["days"]; ok && !isNull(d) {
		if kind(d) != "an array" {
			return nil, fieldErr(path+".days", "want an array of days (mon, tue, wed, thu, fri, sat, sun), got %s", kind(d))
		}
		var days []json.RawMessage
		if err := json.Unmarshal(d, &days); err != nil {
			return nil, fieldErr(path+".days", "%v", err)
		}
		if len(days) == 0 {
			return nil, fieldErr(path+".days", "empty: list the days the window opens on, or leave days out for every day")
		}
		for i, raw := range days {
			p := path + ".days[" + strconv.Itoa(i) + "]"
			s, err := requiredString(p, raw)
			if err != nil {
				return nil, err
			}
			wd, ok := dayNames[strings.ToLower(s)]
			if !ok {
				return nil, fieldErr(p, "unknown day %q: want mon, tue, wed, thu, fri, sat or sun", clip(s))
			}
			w.Days[wd] = true
		}
	} else {
		w.Days = [7]bool{true, true, true, true, true, true, true}
	}
	for _, f := range []struct {
		key string
		dst *int
	}{{"start", &w.Start}, {"end", &w.End}} {
		p := path + "." + f.key
		s, err := requiredString(p, m[f.key])
		if err != nil {
			return nil, err
		}
		sec, ok := clockSeconds(s)
		if !ok {
			return nil, fieldErr(p, "want a time of day HH:MM (00:00 to 23:59) or HH:MM:SS, got %q", clip(s))
		}
		*f.dst = sec
	}
	if w.Start == w.End {
		return nil, fieldErr(path+".end", "equals start (%s): a window must have a length; an end before the start spans midnight", fmtClock(w.Start))
	}
	if w.TZ, err = optionalString(path+".tz", m["tz"]); err != nil {
		return nil, err
	}
	w.Loc = time.Local
	if w.TZ != "" {
		if w.TZ == "Local" || strings.ContainsAny(w.TZ, "\x00") {
			return nil, fieldErr(path+".tz", "unknown time zone %q: want an IANA name such as Europe/Berlin or UTC, or leave tz out for the device's zone", clip(w.TZ))
		}
		loc, err := time.LoadLocation(w.TZ)
		if err != nil {
			return nil, fieldErr(path+".tz", "unknown time zone %q (%v): want an IANA name such as Europe/Berlin or UTC that the system's zone database has", clip(w.TZ), err)
		}
		w.Loc = loc
	}
	return w, nil
}

// clockSeconds parses HH:MM or HH:MM:SS (two digits each) into seconds
// after midnight.
func clockSeconds(s string) (int, bool) {
	if len(s) != 5 && len(s) != 8 {
		return 0, false
	}
	var parts [3]int
	for i := 0; i*3 < len(s); i++ {
		c := s[i*3 : i*3+2]
		if c[0] < '0' || c[0] > '9' || c[1] < '0' || c[1] > '9' || (i*3+2 < len(s) && s[i*3+2] != ':') {
			return 0, false
		}
		parts[i] = int(c[0]-'0')*10 + int(c[1]-'0')
	}
	if parts[0] > 23 || parts[1] > 59 || parts[2] > 59 {
		return 0, false
	}
	return parts[0]*3600 + parts[1]*60 + parts[2], true
}

func fmtClock(sec int) string {
	layout := "15:04"
	if sec%60 != 0 {
		layout = "15:04:05"
	}
	return time.Date(0, 1, 1, sec/3600, sec/60%60, sec%60, 0, time.UTC).Format(layout)
}

// String is the window as a person reads it: "mon,tue 02:00-04:00 Europe/Berlin".
func (w *Window) String() string {
	var days []string
	all := true
	for d := time.Sunday; d <= time.Saturday; d++ {
		if w.Days[d] {
			days = append(days, strings.ToLower(d.String()[:3]))
		} else {
			all = false
		}
	}
	s := fmtClock(w.Start) + "-" + fmtClock(w.End)
	if !all {
		s = strings.Join(days, ",") + " " + s
	}
	tz := w.TZ
	if tz == "" {
		tz = "local time"
	}
	return s + " " + tz
}

// Contains reports whether t is inside the window.
func (w *Window) Contains(t time.Time) bool {
	tl := t.In(w.Loc)
	m := tl.Hour()*3600 + tl.Minute()*60 + tl.Second()
	day := tl.Weekday()
	if w.Start < w.End {
		return w.Days[day] && m >= w.Start && m < w.End
	}
	prev := (day + 6) % 7
	return (w.Days[day] && m >= w.Start) || (w.Days[prev] && m < w.End)
}

// Next is the first moment at or after t when the window is open: t itself
// when it is open now.
func (w *Window) Next(t time.Time) time.Time {
	if w.Contains(t) {
		return t
	}
	tl := t.In(w.Loc)
	for i := 0; i <= 8; i++ {
		d := time.Date(tl.Year(), tl.Month(), tl.Day()+i, w.Start/3600, w.Start/60%60, w.Start%60, 0, w.Loc)
		if d.After(t) && w.Days[d.Weekday()] {
			return d
		}
	}
	return t.Add(24 * time.Hour) // unreachable: some day is listed
}

// parseMaxDefer decodes a duration such as "6h" or "90m"; "0s" sets no bound.
func parseMaxDefer(path string, raw json.RawMessage) (time.Duration, error) {
	s, err := requiredString(path, raw)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fieldErr(path, "want a duration such as 6h or 90m, got %q", clip(s))
	}
	if d < 0 {
		return 0, fieldErr(path, "negative (%s): want a duration of 0 (no bound) or more", s)
	}
	return d, nil
}

// WindowOf is the maintenance window of app: its own, else the target's;
// nil when applies may run at any time.
func (st *State) WindowOf(app string) *Window {
	if a, ok := st.Apps[app]; ok && a.Window != nil {
		return a.Window
	}
	return st.Window
}
