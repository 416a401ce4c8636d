package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// shortEnv is the environment TestSoakShort runs in: netns+kamailio when
// this machine can, and required when CI says so (RELINK_REQUIRE_NETNS=1 or
// RELINK_REQUIRE_KAMAILIO=1); embedded otherwise.
func shortEnv(t *testing.T) string {
	err := netnsAvailable()
	required := os.Getenv(netns.RequireEnv) == "1" || os.Getenv(kamailio.EnvRequire) == "1"
	switch {
	case err == nil:
		return "netns"
	case required:
		t.Fatalf("soak: the netns+kamailio form cannot run: %v (and %s or %s is 1)", err, netns.RequireEnv, kamailio.EnvRequire)
	}
	t.Logf("embedded registrar: %v", err)
	return "embedded"
}

// TestSoakShort is the CI form of the soak: 60 s, 200 trunks and 100
// Links, a fault every 10 s, a sample every 10 s, seed 42 (503 storm,
// half-close, peer hung, registrar restart, black hole: the first three or
// four fit, as samples and recoveries delay the slots). The end sample
// waits 30 s after the last recovery (-settle): a registrar restart's
// REGISTERs stay on the heap 20-30 s, and a CI run that sampled 10 s after
// one read +6.5 % on an 8.6 MiB heap. It asserts the summary's
// pass conditions: heap, goroutines and fds at the end within 5 % of the
// baseline (10 s in), every fault recovered, 0 stuck, 0 orphan bindings,
// 0 stale registrations, 0 false deaths.
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("a 60 s soak")
	}
	envName := shortEnv(t)
	o, err := parseFlags([]string{"-env", envName, "-duration", "60s", "-trunks", "200", "-links", "100",
		"-fault-every", "10s", "-sample", "10s", "-keepalive", "2s", "-timeout", "1s", "-echo-every", "1s",
		"-recover-cap", "30s", "-settle", "30s", "-seed", "42", "-pprof", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	print := newPrinter(&out, false)
	var samples []*Sample
	var faults []*Fault
	sum, err := run(ctx, o, func(v any) {
		print(v)
		switch r := v.(type) {
		case *Sample:
			samples = append(samples, r)
		case *Fault:
			faults = append(faults, r)
		}
	})
	t.Logf("\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"netns": "netns+kamailio", "embedded": "embedded"}[envName]; sum.Env != want {
		t.Errorf("env %q, want %q", sum.Env, want)
	}
	if len(samples) < 5 || len(faults) < 3 || sum.Base == nil || sum.End == nil {
		t.Fatalf("%d samples, %d faults, base %v, end %v: want ≥ 5, ≥ 3, both", len(samples), len(faults), sum.Base, sum.End)
	}
	for _, f := range faults {
		if !f.Recovered || f.Stuck != 0 {
			t.Errorf("fault %d %s: recovered %v, stuck %d", f.N, f.Name, f.Recovered, f.Stuck)
		}
	}
	if sum.End.Registered != o.trunks || sum.End.Ready != o.links {
		t.Errorf("end: %d of %d registered, %d of %d ready", sum.End.Registered, o.trunks, sum.End.Ready, o.links)
	}
	if !sum.Pass {
		t.Errorf("summary does not pass: %s", strings.Join(sum.Problems, "; "))
	}
	for _, name := range []string{"base-heap.pb.gz", "end-goroutine.txt"} {
		if _, err := os.Stat(o.pprof + "/" + name); err != nil {
			t.Errorf("profile: %v", err)
		}
	}
}

// TestJudge checks that a run missing any pass condition fails, and that a
// flat one passes.
func TestJudge(t *testing.T) {
	flat := func() *soak {
		base := &Sample{Heap: 1000, Goroutines: 100, FDs: 50}
		end := &Sample{Heap: 1049, Goroutines: 96, FDs: 52}
		return &soak{byName: map[string]int{}, sum: Summary{Base: base, End: end}}
	}
	s := flat()
	if s.judge(); !s.sum.Pass {
		t.Fatalf("flat run: %v", s.sum.Problems)
	}
	for name, spoil := range map[string]func(*Summary){
		"heap":        func(m *Summary) { m.End.Heap = 1051 },
		"goroutines":  func(m *Summary) { m.End.Goroutines = 106 },
		"fds":         func(m *Summary) { m.End.FDs = 47 },
		"stuck":       func(m *Summary) { m.Stuck = 1 },
		"orphans":     func(m *Summary) { m.Orphans = 1 },
		"stale":       func(m *Summary) { m.Stale = 1 },
		"false death": func(m *Summary) { m.FalseDeaths = 1 },
		"no base":     func(m *Summary) { m.Base = nil },
	} {
		s := flat()
		spoil(&s.sum)
		if s.judge(); s.sum.Pass || len(s.sum.Problems) != 1 {
			t.Errorf("%s: pass %v, problems %v", name, s.sum.Pass, s.sum.Problems)
		}
	}
}

// TestWindow checks which deaths a fault's window expects: the kinds it
// affects, from the cut to the clear + grace.
func TestWindow(t *testing.T) {
	cut := time.Unix(100, 0)
	w := window{cut: cut, sip: true, grace: 3 * time.Second}
	for _, tc := range []struct {
		links bool
		at    time.Time
		clear time.Time
		want  bool
	}{
		{false, cut.Add(time.Second), time.Time{}, true},
		{true, cut.Add(time.Second), time.Time{}, false}, // a Link, in a SIP fault
		{false, cut.Add(-time.Millisecond), time.Time{}, false},
		{false, cut.Add(5 * time.Second), cut.Add(2 * time.Second), true},
		{false, cut.Add(6 * time.Second), cut.Add(2 * time.Second), false},
	} {
		w.clear = tc.clear
		if got := w.expects(tc.links, tc.at); got != tc.want {
			t.Errorf("links %v at cut%+v clear %v: %v, want %v", tc.links, tc.at.Sub(cut), tc.clear, got, tc.want)
		}
	}
	if (&window{}).expects(false, cut) {
		t.Error("no fault: a death expected")
	}
}

// TestPickFaults checks -faults.
func TestPickFaults(t *testing.T) {
	fs, err := pickFaults("peer-rst, blackhole")
	if err != nil || len(fs) != 2 || fs[0].name != "peer-rst" {
		t.Errorf("pickFaults: %v, %v", fs, err)
	}
	if _, err := pickFaults("nope"); err == nil {
		t.Error("an unknown fault accepted")
	}
	if all, _ := pickFaults(""); len(all) != len(matrix) {
		t.Errorf("all: %d faults", len(all))
	}
}

// TestMain checks for leaked goroutines, unless the test binary was started
// as the soak's measured client: then it is the command.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "1" {
		goleak.VerifyTestMain(m)
		return
	}
	main()
}
