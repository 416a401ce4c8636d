package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const soakJSON = `{"kind":"sample","t_s":0,"min":0,"heap":52428800,"goroutines":4003,"fds":1008}
{"kind":"fault","n":1,"name":"blackhole","start_s":30,"cleared_s":40}
{"kind":"sample","t_s":60,"min":1,"tag":"base","heap":53477376,"goroutines":4003,"fds":1008}
not json
{"kind":"sample","t_s":120,"min":2,"tag":"end","heap":54525952,"goroutines":4003,"fds":1008}
{"kind":"summary","env":"embedded","trunks":2000,"links":1000}
`

// TestDraw reads a soak's lines (skipping what is not JSON) and checks that
// the SVG is well-formed XML with a curve and a ±5 % band per panel and a
// tick per fault.
func TestDraw(t *testing.T) {
	s, err := read(strings.NewReader(soakJSON))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.samples) != 3 || len(s.faults) != 1 || !strings.Contains(s.title, "2000 trunks") {
		t.Fatalf("read: %d samples, %d faults, title %q", len(s.samples), len(s.faults), s.title)
	}
	var b bytes.Buffer
	if err := draw(&b, s); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	dec := xml.NewDecoder(&b)
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG not well-formed: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			counts[se.Name.Local]++
		}
	}
	if counts["polyline"] != 3 || counts["circle"] != 9 || counts["line"] != 3*(1+2) {
		t.Errorf("elements %v: want 3 polylines, 9 circles, 9 lines", counts)
	}
}

// TestReadTooFew refuses an input without two samples.
func TestReadTooFew(t *testing.T) {
	if _, err := read(strings.NewReader(`{"kind":"sample","min":0}`)); err == nil {
		t.Error("one sample accepted")
	}
}

// TestNiceCeil checks the axis rounding.
func TestNiceCeil(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{{0, 1}, {17.3, 18}, {1249, 1300}, {100, 100}, {0.123, 0.13}} {
		if got := niceCeil(tc.in); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("niceCeil(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
