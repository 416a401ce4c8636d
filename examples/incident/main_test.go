package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
	"github.com/relinkgo/relink/internal/kamailio"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.DiscardHandler)) // sipgo's transports log to the default logger
	if os.Getenv(workerEnv) == "1" {
		// -procs re-executes this test binary as its workers.
		if err := workerMain(context.Background(), os.Args[1:], os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// small is the demo run small: 60 trunks per population, C = 40/s,
// keepalive 1 s so relink's bound is 6 s, an 8 s outage, 6 s bindings (the
// naive refresh leaves ~4.4 s into the outage, its Timer F fires ~36 s after
// the freeze); at most 60 s of watching after the restore.
var small = []string{"-trunks", "60", "-capacity", "40", "-outage", "8s", "-keepalive", "1s",
	"-grant", "6s", "-after", "60s", "-json"}

// demoRun is one run of the demo through its command line, in the background.
type demoRun struct {
	stdout, stderr bytes.Buffer
	err            error
	took           time.Duration
	done           chan struct{}
}

// startRun runs the demo with args; wait for it with result.
func startRun(args ...string) *demoRun {
	r := &demoRun{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		ctx, cancel := context.WithTimeout(context.Background(), 110*time.Second)
		defer cancel()
		start := time.Now()
		r.err = mainErr(ctx, args, &r.stdout, &r.stderr)
		r.took = time.Since(start)
	}()
	return r
}

// result waits for r (mainErr's ctx bounds it at 110 s) and returns its
// -json summary; the timeline is logged if the test fails.
func (r *demoRun) result(t *testing.T) summary {
	t.Helper()
	<-r.done
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("timeline:\n%s", r.stderr.String())
		}
	})
	if r.err != nil {
		t.Fatalf("mainErr: %v", r.err)
	}
	t.Logf("ran in %v\n%s", r.took.Round(time.Millisecond), r.stdout.String())
	var s summary
	if err := json.Unmarshal(r.stdout.Bytes(), &s); err != nil {
		t.Fatalf("stdout is not the summary: %v\n%s", err, r.stdout.String())
	}
	return s
}

// TestIncident runs the demo small, four times at once (each run waits
// ~35 s for the naive gateway's Timer F; together they take as long as
// one): with the default far end and the -json and -plot outputs, with the
// two far ends that never let the naive gateway back, and with -procs 2.
func TestIncident(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the incident for ~45 s")
	}
	t.Parallel()
	svg := filepath.Join(t.TempDir(), "incident.svg")
	// The default run at C = 20/s.
	def := startRun("-trunks", "60", "-capacity", "20", "-outage", "8s", "-keepalive", "1s",
		"-grant", "6s", "-after", "60s", "-json", "-plot", svg)
	far := map[string]*demoRun{}
	for _, mode := range []string{farBlackhole, farHung} {
		far[mode] = startRun(append(slices.Clone(small), "-farend", mode)...)
	}
	procs := startRun(append(slices.Clone(small), "-procs", "2")...)
	t.Run("json", func(t *testing.T) { checkDefaultRun(t, def, svg) })
	t.Run("farend", func(t *testing.T) { checkFarEnds(t, far) })
	t.Run("procs", func(t *testing.T) { checkProcs(t, procs) })
}

// checkRelinkBack asserts that every relink trunk detected the outage
// within its bound and was registered again at the end.
func checkRelinkBack(t *testing.T, r popSummary, n int) {
	t.Helper()
	if r.Recovered != n || r.Stuck != 0 || r.LiveAtEnd != n || r.RecoverS == nil {
		t.Errorf("relink: recovered %d, stuck %d, live at the registrar %d, recover_s %v; want %d, 0, %d, a time",
			r.Recovered, r.Stuck, r.LiveAtEnd, fmtp(r.RecoverS), n, n)
	}
	if r.Detected != n || r.DetectP99S == nil || r.BoundS == nil || *r.DetectP99S > *r.BoundS+0.5 {
		t.Errorf("relink detection: %d/%d detected, p99 %v, bound %v", r.Detected, n, fmtp(r.DetectP99S), fmtp(r.BoundS))
	}
}

// checkNaiveActed asserts that the naive population was watched until its
// own timers fired: every trunk noticed (Timer F) and sent at least one
// more REGISTER.
func checkNaiveActed(t *testing.T, n popSummary, trunks int) {
	t.Helper()
	if n.AttemptsPerTrunk < 2 || n.Detected != trunks || n.Ends == "" {
		t.Errorf("naive: %.2f REGISTERs per trunk, %d/%d detected, ends %q; want ≥ 2, all, a reason",
			n.AttemptsPerTrunk, n.Detected, trunks, n.Ends)
	}
	// Timer F (32 s) after a REGISTER sent ~4.4 s into the outage.
	if n.DetectP50S == nil || *n.DetectP50S < 30 {
		t.Errorf("naive detection p50 %v s, want Timer F's ≥ 30 s", fmtp(n.DetectP50S))
	}
}

// checkDefaultRun checks the demo run small (60 trunks per population, C =
// 20/s, keepalive 1 s so the bound is 6 s, an 8 s outage, 6 s bindings, the
// default far end, rst): the -json summary and the -plot chart. The run
// lasts until the naive population's Timer F has fired and it retried:
// every naive trunk sent ≥ 2 REGISTERs.
func checkDefaultRun(t *testing.T, run *demoRun, svg string) {
	<-run.done
	if run.err != nil {
		t.Fatalf("mainErr: %v\nstderr:\n%s", run.err, run.stderr.String())
	}
	stdout, stderr := &run.stdout, &run.stderr
	t.Logf("ran in %v\n%s", run.took.Round(time.Millisecond), stdout.String())

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
	// Naive figures are whatever they are; they must be consistent, and
	// taken after its own timers fired.
	n := s.Naive
	if n.Recovered+n.Stuck != 60 || n.BoundS != nil {
		t.Errorf("naive: recovered %d + stuck %d != 60, or bound %v not null", n.Recovered, n.Stuck, fmtp(n.BoundS))
	}
	checkNaiveActed(t, n, 60)
	if s.FarEnd != farRST || !strings.Contains(s.FarEndNote, "RST") {
		t.Errorf("farend %q (%q), want rst by default", s.FarEnd, s.FarEndNote)
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
		{"-farend", "forget"},
		{"-procs", "-1"},
		{"-trunks", "2", "-procs", "3"},
		{"-redis", "127.0.0.1:6379"}, // no -procs
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

// checkFarEnds checks the demo run small with the far ends that never let
// the naive gateway back in (its pooled connection is never closed): relink
// recovers on new connections, the naive gateway's Timer F fires and it
// retries on the dead one, and the summary says the mode and where naive
// ends.
func checkFarEnds(t *testing.T, runs map[string]*demoRun) {
	for _, c := range []struct{ mode, ends string }{
		{farBlackhole, "tcp_retries2"},
		{farHung, "restarted"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			s := runs[c.mode].result(t)
			if s.FarEnd != c.mode || s.FarEndNote == "" {
				t.Errorf("farend %q (%q), want %q", s.FarEnd, s.FarEndNote, c.mode)
			}
			checkRelinkBack(t, s.Relink, 60)
			checkNaiveActed(t, s.Naive, 60)
			if s.Naive.Recovered != 0 || !strings.Contains(s.Naive.Ends, c.ends) {
				t.Errorf("naive: %d recovered, ends %q; want none (its connection is never closed), a reason naming %q",
					s.Naive.Recovered, s.Naive.Ends, c.ends)
			}
		})
	}
}

// checkProcs checks the demo run small with the relink population in two
// worker processes (this test binary re-executed) sharing one gate state on
// the embedded Redis: every trunk of each process recovers, and the summary
// has each process's figures beside the total.
func checkProcs(t *testing.T, run *demoRun) {
	s := run.result(t)
	if s.Procs != 2 || !strings.Contains(s.Redis, "embedded") || len(s.Processes) != 2 {
		t.Fatalf("procs %d, redis %q, %d processes; want 2, embedded, 2", s.Procs, s.Redis, len(s.Processes))
	}
	checkRelinkBack(t, s.Relink, 60)
	checkNaiveActed(t, s.Naive, 60)
	for i, p := range s.Processes {
		if p.Proc == nil || *p.Proc != i || p.Trunks != 30 || p.Recovered != 30 || p.Detected != 30 || p.RecoverS == nil {
			t.Errorf("process %d: %+v; want its 30 trunks detected and recovered", i, p)
		}
	}
}

func TestRetransmitTimeout(t *testing.T) {
	for _, c := range []struct {
		boundary int
		want     time.Duration
	}{{15, 924600 * time.Millisecond}, {8, 102200 * time.Millisecond}, {3, 3 * time.Second}, {9, 204600 * time.Millisecond}} {
		if got := retransmitTimeout(c.boundary); got != c.want {
			t.Errorf("retransmitTimeout(%d) = %v, want %v", c.boundary, got, c.want)
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

// TestEmbeddedRedisRunsFleetgate: fleetgate's admission script runs on the
// embedded server (the gate's ceiling, 1e6, must reach its Lua without an
// exponent: gopher-lua reads "1e+06" as nil), and the fleet's pace doubles
// during startup as on Redis.
func TestEmbeddedRedisRunsFleetgate(t *testing.T) {
	mini := miniredis.NewMiniRedis()
	if err := mini.Start(); err != nil {
		t.Fatal(err)
	}
	defer mini.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mini.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	f, err := fleetgate.New(rdb, fleetgate.Config{Heartbeat: -1})
	if err != nil {
		t.Fatal(err)
	}
	m := f.Join("registrar")
	defer m.Leave()
	req := backoff.FleetRequest{Book: true, Propose: true, Grow: time.Millisecond, Ceiling: 1e6,
		Pace: backoff.FleetPace{Pace: 20, Startup: true}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 20 {
		rep, err := m.Admit(ctx, req)
		if err != nil {
			t.Fatalf("admit: %v", err)
		}
		if rep.Pace.Pace > 20 {
			return // doubled
		}
		req.Pace, req.Propose = rep.Pace, false
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the fleet's pace never doubled on the embedded server")
}

// TestCatchUp: a trunk back after the restore but before its worker heard of
// the restore counts as recovered, from when it was; one back before the
// restore does not.
func TestCatchUp(t *testing.T) {
	m := &marks{start: time.Unix(100, 0)}
	m.freeze.Store(time.Unix(110, 0).UnixNano())
	early, late := &trunkRec{}, &trunkRec{}
	early.up.Store(time.Unix(111, 0).UnixNano()) // during the outage
	late.up.Store(time.Unix(121, 0).UnixNano())  // after the restore at 120
	late.registered(time.Unix(121, 0), m)        // the mark has not arrived: missed
	if late.recover.Load() != 0 {
		t.Fatal("recovery recorded before the restore mark")
	}
	m.restore.Store(time.Unix(120, 0).UnixNano())
	early.catchUp(m)
	late.catchUp(m)
	if early.recover.Load() != 0 || late.recover.Load() != time.Unix(121, 0).UnixNano() {
		t.Errorf("recover: early %d, late %d; want 0 and the time it was back", early.recover.Load(), late.recover.Load())
	}
}
