package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/redistest"
)

// TestMain lets the test binary be its own worker processes.
func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		main()
		os.Exit(0)
	}
	goleak.VerifyTestMain(m)
}

// smallArgs is a small herd: 2 processes of 4 trunks, C = 40/s, a 2 s
// black hole (the trunks notice a silent flow within 0.8 s).
func smallArgs(registrar string, strategies []string) []string {
	return []string{"-registrar", registrar, "-procs", "2", "-trunks", "4", "-capacity", "40",
		"-hole", "2s", "-keepalive", "300ms", "-keepalive-timeout", "500ms", "-timeout", "20s",
		"-strategies", strings.Join(strategies, ",")}
}

// strategiesHere are the strategies this machine can run: the shared ones
// need redis-server (RELINK_REQUIRE_REDIS=1 makes its absence a failure).
func strategiesHere(t *testing.T) []string {
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv(redistest.EnvRequire) == "1" {
			t.Fatalf("%v, and %s=1", redistest.ErrNotInstalled, redistest.EnvRequire)
		}
		t.Logf("%v: the local strategies only", redistest.ErrNotInstalled)
		return []string{"local", "local-rate"}
	}
	return allStrategies
}

// runSmall runs the command in this process (its workers are copies of the
// test binary) and checks every Result.
func runSmall(t *testing.T, registrar string) {
	t.Helper()
	strategies := strategiesHere(t)
	o, err := parseFlags(smallArgs(registrar, strategies))
	if err != nil {
		t.Fatal(err)
	}
	var got []Result
	if err := run(o, func(r Result) { got = append(got, r) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(strategies) {
		t.Fatalf("%d results for %d strategies", len(got), len(strategies))
	}
	n := float64(o.procs * o.trunks)
	for i, r := range got {
		t.Logf("%+v", r)
		if r.Strategy != strategies[i] || r.Procs != 2 || r.Trunks != 4 || r.Capacity != 40 ||
			r.Registrar != registrar || r.HoleS != 2 {
			t.Errorf("%s: header fields %+v", strategies[i], r)
		}
		if r.Stuck != 0 || r.Undetected != 0 {
			t.Errorf("%s: %d stuck, %d undetected; want every trunk to lose its flow and register again",
				r.Strategy, r.Stuck, r.Undetected)
		}
		if r.RecoverS <= 0 || r.RecoverS > 20 || r.RatioToLimit != r.RecoverS/(n/o.capacity) ||
			r.FirstS <= 0 || r.FirstS > r.RecoverS {
			t.Errorf("%s: first back %v s, all %v s, ratio %v", r.Strategy, r.FirstS, r.RecoverS, r.RatioToLimit)
		}
		// Every trunk registered again at the registrar after the restore.
		if r.ServerPerTrunk < 1 || r.PeakLoadRatio <= 0 || r.RejectedFrac < 0 {
			t.Errorf("%s: %.2f REGISTERs per trunk at the registrar, peak %.2f, rejected %.2f",
				r.Strategy, r.ServerPerTrunk, r.PeakLoadRatio, r.RejectedFrac)
		}
		if sharedRedis := shared(r.Strategy); sharedRedis != (r.RedisOpsPerAdmission > 0) {
			t.Errorf("%s: %.2f Redis calls per admission", r.Strategy, r.RedisOpsPerAdmission)
		}
		// Each call is bounded at 50 ms (100 ms by the gate); a loaded
		// machine adds its scheduling delay to the measure, hence the margin.
		if r.MaxRedisWaitMs > 1000 {
			t.Errorf("%s: a Redis call took %.1f ms, bound 100 ms", r.Strategy, r.MaxRedisWaitMs)
		}
	}
}

// A small run of every strategy with worker processes against the embedded
// registrar (no root needed): every trunk loses its flow in the silence,
// every one registers again after the restore, and every figure is filled.
func TestRunSmallEmbedded(t *testing.T) {
	runSmall(t, "embedded")
}

// The same against Kamailio in network namespaces (root, kamailio, ip, nft;
// RELINK_REQUIRE_NETNS=1 or RELINK_REQUIRE_KAMAILIO=1 turns a skip into a
// failure).
func TestRunSmallKamailio(t *testing.T) {
	netns.Require(t)
	kamailio.Require(t)
	runSmall(t, "kamailio")
}

// -server window: the gate alone against the UDP window server.
func TestRunSmallWindow(t *testing.T) {
	o, err := parseFlags([]string{"-server", "window", "-procs", "2", "-trunks", "4", "-capacity", "40",
		"-timeout", "20s", "-strategy", "local"})
	if err != nil {
		t.Fatal(err)
	}
	var got []Result
	if err := run(o, func(r Result) { got = append(got, r) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Registrar != "window" || got[0].Stuck != 0 || got[0].RecoverS <= 0 {
		t.Fatalf("%+v", got)
	}
}

// The -json line carries the documented field names.
func TestResultJSON(t *testing.T) {
	b, err := json.Marshal(Result{Strategy: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"strategy", "procs", "trunks", "capacity", "registrar", "recover_s",
		"ratio_to_limit", "rejected_frac", "peak_load_ratio", "redis_ops_per_admission",
		"max_redis_wait_ms", "stuck"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-strategy", "shared-rate"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.strategies) != 1 || o.strategies[0] != "shared-rate" || o.procs != 50 || o.trunks != 40 ||
		o.capacity != 200 || o.hole != 5*time.Second || o.registrar != "auto" || o.server != "sip" || o.runs != 1 {
		t.Errorf("defaults: %+v", o)
	}
	for _, args := range [][]string{
		{"-procs", "0"}, {"-runs", "0"}, {"-capacity", "0"}, {"-hole", "0s"}, {"-strategy", "x"},
		{"-server", "x"}, {"-registrar", "x"}, {"-strategies", ","},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

// With Kamailio the workers live in a namespace of their own: a Redis on
// this host's loopback is an error, not a silent local fallback.
func TestKamailioRefusesLoopbackRedis(t *testing.T) {
	o, err := parseFlags([]string{"-registrar", "kamailio", "-redis", "127.0.0.1:6379"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup(o); err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("setup: %v", err)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true,
		"10.0.0.1:1": false, "redis:1": false, "": false} {
		if loopback(addr) != want {
			t.Errorf("loopback(%q) = %v", addr, !want)
		}
	}
}

func TestPeakAndMedian(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	for _, c := range []struct {
		at   []time.Time
		want int
	}{
		{nil, 0},
		{at(0), 1},
		{at(0, 99), 2},
		{at(0, 100), 1},
		{at(0, 50, 120, 140, 260), 3}, // 50, 120, 140
	} {
		if got := peak(c.at, 100*time.Millisecond); got != c.want {
			t.Errorf("peak(%v) = %d, want %d", c.at, got, c.want)
		}
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v", m)
	}
	if m := median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median = %v", m)
	}
	if m := median(nil); m != 0 {
		t.Errorf("median(nil) = %v", m)
	}
}
