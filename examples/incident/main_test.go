package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/kamailio"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.DiscardHandler)) // sipgo's transports log to the default logger
	goleak.VerifyTestMain(m)
}

// TestIncidentJSON runs the demo small (60 trunks per population, C = 20/s,
// keepalive 1 s so the bound is 6 s, an 8 s outage, 6 s bindings; it stops
// once relink is back, at most 20 s after the restore) through its command
// line and checks the -json summary and the -plot chart.
func TestIncidentJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the incident for ~15 s")
	}
	t.Parallel()
	svg := filepath.Join(t.TempDir(), "incident.svg")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"-trunks", "60", "-capacity", "20", "-outage", "8s", "-keepalive", "1s",
		"-grant", "6s", "-after", "20s", "-json", "-plot", svg}
	start := time.Now()
	if err := mainErr(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("mainErr: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("ran in %v\n%s", time.Since(start).Round(time.Millisecond), stdout.String())

	// stdout is exactly one JSON object with the documented fields.
	dec := json.NewDecoder(bytes.NewReader(stdout.Bytes()))
	var all map[string]json.RawMessage
	if err := dec.Decode(&all); err != nil {
		t.Fatalf("stdout is not a JSON object: %v\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Fatalf("stdout holds more than one JSON value:\n%s", stdout.String())
	}
	for _, pop := range []string{"relink", "naive"} {
		var m map[string]any
		if err := json.Unmarshal(all[pop], &m); err != nil {
			t.Fatalf("%q: %v", pop, err)
		}
		for _, k := range []string{"trunks", "recovered", "stuck", "detect_p50_s", "detect_p99_s", "bound_s",
			"recover_s", "ratio_to_limit", "attempts_per_trunk", "rejected"} {
			if _, ok := m[k]; !ok {
				t.Errorf("%s: field %q missing", pop, k)
			}
		}
	}
	var s summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	r := s.Relink
	if r.Trunks != 60 || s.Naive.Trunks != 60 {
		t.Fatalf("trunks: relink %d, naive %d; want 60 each", r.Trunks, s.Naive.Trunks)
	}
	if r.Recovered != 60 || r.Stuck != 0 || r.LiveAtEnd != 60 {
		t.Errorf("relink: recovered %d, stuck %d, live at the registrar %d; want 60, 0, 60", r.Recovered, r.Stuck, r.LiveAtEnd)
	}
	if r.BoundS == nil || *r.BoundS != 6 {
		t.Fatalf("relink bound_s = %v, want 6 (keepalive 1 s + timeout 5 s)", r.BoundS)
	}
	// Detection is measured from the freeze; the flow was silent a little
	// before it, so it comes at or before the bound. Margin for a loaded
	// machine and -race.
	if r.Detected != 60 || r.DetectP50S == nil || r.DetectP99S == nil || *r.DetectP99S > *r.BoundS+0.5 || *r.DetectP50S <= 0 {
		t.Errorf("relink detection: %d detected, p50 %v p99 %v; want all, within %v s + 0.5 s",
			r.Detected, fmtp(r.DetectP50S), fmtp(r.DetectP99S), *r.BoundS)
	}
	// N/C is 3 s here; each 503's Retry-After (1 s) pauses the whole gate,
	// which weighs more on a short recovery: a generous bound.
	if r.RecoverS == nil || r.RatioToLimit == nil || *r.RatioToLimit > 4 || *r.RatioToLimit < 0.5 {
		t.Errorf("relink recovery: %v s, ratio %v; want a ratio within [0.5, 4]", fmtp(r.RecoverS), fmtp(r.RatioToLimit))
	}
	// The kept nonce makes a recovery one transaction; retries after 503s
	// add a few.
	if r.AttemptsPerTrunk < 1 || r.AttemptsPerTrunk > 4 {
		t.Errorf("relink attempts per trunk %v, want within [1, 4]", r.AttemptsPerTrunk)
	}
	if r.Rejected > 60 {
		t.Errorf("relink received %d 503s for 60 trunks", r.Rejected)
	}
	// Naive figures are whatever they are; they must be consistent.
	n := s.Naive
	if n.Recovered+n.Stuck != 60 || n.BoundS != nil {
		t.Errorf("naive: recovered %d + stuck %d != 60, or bound %v not null", n.Recovered, n.Stuck, fmtp(n.BoundS))
	}

	// The timeline went to stderr, one line a second, with both marks.
	tl := stderr.String()
	for _, want := range []string{"FREEZE", "RESTORE", "OUTAGE", "restored"} {
		if !strings.Contains(tl, want) {
			t.Errorf("timeline lacks %q:\n%s", want, tl)
		}
	}

	// The chart is well-formed SVG.
	f, err := os.Open(svg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := xml.NewDecoder(f)
	var root string
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Errorf("chart root element %q, want svg", root)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-trunks", "0"},
		{"-capacity", "-1"},
		{"-grant", "10ms"},
		{"-registrar", "sip:127.0.0.1:5060;transport=tcp"}, // no -user
		{"extra"},
	} {
		err := mainErr(context.Background(), args, io.Discard, io.Discard)
		if !errors.Is(err, errUsage) {
			t.Errorf("%q: err = %v, want errUsage", args, err)
		}
	}
}

func TestQuantile(t *testing.T) {
	xs := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, c := range []struct{ q, want float64 }{{0.5, 5}, {0.99, 10}, {0, 1}, {0.1, 1}, {0.11, 2}} {
		if got := quantile(xs, c.q); got != c.want {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
}

func fmtp(p *float64) any {
	if p == nil {
		return "null"
	}
	return *p
}

// TestIncidentKamailio runs the relink population against a real Kamailio
// registrar (-registrar), which admits 30 REGISTERs/s and grants 6 s
// bindings, through the freeze proxy. It skips without Kamailio (and fails
// instead with RELINK_REQUIRE_KAMAILIO=1).
func TestIncidentKamailio(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the incident for ~15 s")
	}
	t.Parallel()
	k := kamailio.Start(t, kamailio.Options{Rate: 30, MaxExpires: 6 * time.Second, MinExpires: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	args := []string{"-registrar", k.URI(), "-user", "kam", "-pass", k.Password(),
		"-trunks", "30", "-capacity", "30", "-outage", "8s", "-keepalive", "1s", "-grant", "6s", "-after", "20s", "-json"}
	if err := mainErr(ctx, args, &stdout, &stderr); err != nil {
		t.Fatalf("mainErr: %v\nstderr:\n%s", err, stderr.String())
	}
	var s summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("%v\n%s", err, stdout.String())
	}
	r := s.Relink
	if s.Registrar != k.URI() || r.LiveAtEnd != -1 {
		t.Errorf("registrar %q, live_at_end %d; want %q, -1 (unknown)", s.Registrar, r.LiveAtEnd, k.URI())
	}
	if r.Recovered != 30 || r.Stuck != 0 || r.Detected != 30 || r.DetectP99S == nil || *r.DetectP99S > 6.5 {
		t.Errorf("relink against Kamailio: recovered %d, stuck %d, detected %d, p99 %v\n%s",
			r.Recovered, r.Stuck, r.Detected, fmtp(r.DetectP99S), stdout.String())
	}
	// Kamailio saw every trunk again: its contacts (usrloc) hold them all.
	st, err := k.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kamailio: %+v", st)
	if t.Failed() {
		t.Logf("timeline:\n%s", stderr.String())
	}
}
