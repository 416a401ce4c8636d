package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A small run of every sipgo-based strategy against a real Kamailio, through
// the freeze proxy (no root needed): relink's trunks all notice the silent
// path within the bound and all register again after the restore, with
// every figure of the result filled in; the baselines built on sipgo's
// client keep using the dead pooled connection (the proxy forgot it), so
// none of their trunks is back by the cap.
func TestRunSmall(t *testing.T) {
	kamailio.Require(t)
	o := &options{n: 20, capacity: 100, keepAlive: 500 * time.Millisecond, timeout: 500 * time.Millisecond,
		retryAfter: time.Second, hole: 1500 * time.Millisecond, capAfter: 8 * time.Second,
		baselineCap: 6 * time.Second, diagoRestart: 5 * time.Second, pjsipRetry: time.Minute, pjsipSpread: 10 * time.Second,
		method: "proxy", strategies: []string{"relink", "relink-rate", "naive", "diago", "pjsip-like"}}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	var got []Result
	var out strings.Builder
	status, err := run(context.Background(), o, &env{method: "proxy", why: "test"},
		func(f string, a ...any) { out.WriteString(strings.TrimSpace(strings.ReplaceAll(f, "%", "")) + "\n") },
		func(r Result) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if status != 0 {
		t.Errorf("status %d, want 0", status)
	}
	if len(got) != 5 {
		t.Fatalf("%d results, want 5", len(got))
	}
	if got[2].Strategy != naiveWorst {
		t.Errorf("naive is reported as %q, want %q", got[2].Strategy, naiveWorst)
	}
	for _, r := range got {
		t.Logf("%+v", r)
		if r.N != o.n || r.Capacity != o.capacity || r.BoundS != 1 || r.Method != "proxy" || r.RetryAfterS != 1 {
			t.Errorf("%s: header fields %+v", r.Strategy, r)
		}
		if !isRelink(r.Strategy) {
			// sipgo never evicts the connection the proxy forgot: every
			// REGISTER waits for Timer B (32 s) on it.
			if r.Stuck != o.n {
				t.Errorf("%s: %d stuck, want all %d (sipgo reuses the dead connection)", r.Strategy, r.Stuck, o.n)
			}
			if r.TransactionsPerTrunk < 1 {
				t.Errorf("%s: %.2f REGISTERs per trunk, want ≥ 1", r.Strategy, r.TransactionsPerTrunk)
			}
			if r.Model == "" || r.CapS != o.baselineCap.Seconds() {
				t.Errorf("%s: model %q, watched %.1f s after the restore, want -baseline-cap", r.Strategy, r.Model, r.CapS)
			}
			continue
		}
		if r.Stuck != 0 || r.Undetected != 0 {
			t.Errorf("%s: %d stuck, %d undetected, want none", r.Strategy, r.Stuck, r.Undetected)
		}
		if r.DetectMaxS <= 0 || r.DetectMaxS > r.BoundS+0.5 {
			t.Errorf("%s: loss noticed %.2f s after the cut, bound %.1f s", r.Strategy, r.DetectMaxS, r.BoundS)
		}
		if r.RecoverS <= 0 || r.RecoverS >= o.capAfter.Seconds() || r.FirstS > r.HalfS || r.HalfS > r.RecoverS {
			t.Errorf("%s: recovery times first %.2f, half %.2f, all %.2f s", r.Strategy, r.FirstS, r.HalfS, r.RecoverS)
		}
		if want := r.RecoverS / (float64(o.n) / o.capacity); r.RatioToLimit != want {
			t.Errorf("%s: ratio %v, want %v", r.Strategy, r.RatioToLimit, want)
		}
		// Each trunk needs one REGISTER (the nonce is kept); scouts into
		// the black hole add a few.
		if r.TransactionsPerTrunk < 1 || r.TransactionsPerTrunk > 3 {
			t.Errorf("%s: %.2f REGISTERs per trunk", r.Strategy, r.TransactionsPerTrunk)
		}
		if r.ServerPerTrunk < 1 {
			t.Errorf("%s: Kamailio saw %.2f REGISTERs per trunk, want ≥ 1", r.Strategy, r.ServerPerTrunk)
		}
	}
	if !strings.Contains(out.String(), "method: proxy") {
		t.Errorf("the method is not printed:\n%s", out.String())
	}
}

// The -json line carries the documented field names.
func TestResultJSON(t *testing.T) {
	b, err := json.Marshal(Result{Strategy: "relink", N: 1})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"strategy", "n", "capacity", "recover_s", "ratio_to_limit", "rejected_frac",
		"transactions_per_trunk", "stuck", "bound_s", "cap_s", "gave_up"} {
		if _, ok := m[k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := options{n: 1, capacity: 1, keepAlive: time.Second, timeout: time.Second, capAfter: time.Second,
		method: "auto", strategies: []string{"relink"}}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*options){
		"n":        func(o *options) { o.n = 0 },
		"capacity": func(o *options) { o.capacity = 0 },
		"timeout":  func(o *options) { o.timeout = 0 },
		"method":   func(o *options) { o.method = "x" },
		"strategy": func(o *options) { o.strategies = []string{"x"} },
		"baresip1": func(o *options) { o.strategies = []string{"baresip1"} },
		"none":     func(o *options) { o.strategies = nil },
	} {
		o := ok
		mod(&o)
		if o.validate() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// Every default strategy is known to validate, and naive is renamed.
func TestValidateStrategies(t *testing.T) {
	o := options{n: 1, capacity: 1, keepAlive: time.Second, timeout: time.Second, capAfter: time.Second,
		method: "auto", strategies: append([]string{"naive"}, allStrategies...)}
	if err := o.validate(); err != nil {
		t.Fatal(err)
	}
	if o.strategies[0] != naiveWorst {
		t.Errorf("naive validated as %q, want %q", o.strategies[0], naiveWorst)
	}
	bad := options{n: 1, capacity: 1, keepAlive: time.Second, timeout: time.Second, capAfter: time.Second,
		method: "auto", strategies: []string{"pjsip"}}
	if err := bad.validate(); !errors.Is(err, errUnknownStrategy) {
		t.Errorf("pjsip: %v, want errUnknownStrategy", err)
	}
}

// Each baseline is watched at least as long as its own timers need.
func TestCapFor(t *testing.T) {
	o := options{capAfter: 60 * time.Second, diagoRestart: 5 * time.Second, pjsipRetry: 60 * time.Second,
		pjsipSpread: 10 * time.Second}
	for s, want := range map[string]time.Duration{
		"relink": 60 * time.Second, "relink-rate": 60 * time.Second, naiveWorst: 60 * time.Second,
		"diago": 67 * time.Second, "pjsip-like": 140 * time.Second, "baresip": baresipHorizon,
	} {
		if got := o.capFor(s); got != want {
			t.Errorf("capFor(%s) = %v, want %v", s, got, want)
		}
	}
	o.baselineCap = 5 * time.Second
	if got := o.capFor("diago"); got != 5*time.Second {
		t.Errorf("with -baseline-cap: %v", got)
	}
	if got := o.capFor("relink"); got != 60*time.Second {
		t.Errorf("relink with -baseline-cap: %v", got)
	}
}

// diago v0.42.1's decisions, as its Register and calcRetry make them.
func TestDiagoDecisions(t *testing.T) {
	for code, fatal := range map[int]bool{401: true, 407: true, 503: true, 501: true, 599: true, 100: true, 700: true,
		500: false, 408: false, 403: false, 404: false, 600: false} {
		if got := diagoFatal(code); got != fatal {
			t.Errorf("diagoFatal(%d) = %v, want %v", code, got, fatal)
		}
	}
	for expiry, want := range map[time.Duration]time.Duration{
		time.Second:     30 * time.Second, // int(0.75) = 0 → 30 s
		2 * time.Second: time.Second, 5 * time.Second: 3 * time.Second, 3600 * time.Second: 2700 * time.Second,
	} {
		if got := diagoCalcRetry(expiry); got != want {
			t.Errorf("diagoCalcRetry(%v) = %v, want %v", expiry, got, want)
		}
	}
}

func TestRetryAfterAndTemporal(t *testing.T) {
	res := func(code int, ra string) *sipmsg.Response {
		r := sipmsg.NewResponse(code, "x")
		if ra != "" {
			r.AppendHeader(sipmsg.NewHeader("Retry-After", ra))
		}
		return r
	}
	for ra, want := range map[string]time.Duration{"": 0, "5": 5 * time.Second, " 2;duration=10": 2 * time.Second,
		"x": 0, "-3": 0, "0": 0} {
		if got := retryAfter(res(503, ra)); got != want {
			t.Errorf("Retry-After %q: %v, want %v", ra, got, want)
		}
	}
	if retryAfter(nil) != 0 || !pjsipTemporal(nil) {
		t.Error("no response: want no Retry-After and temporal (pjsip's 408)")
	}
	for code, want := range map[int]bool{408: true, 500: true, 502: true, 503: true, 504: true, 603: true,
		401: false, 403: false, 404: false, 501: false} {
		if got := pjsipTemporal(res(code, "")); got != want {
			t.Errorf("pjsipTemporal(%d) = %v, want %v", code, got, want)
		}
	}
}

// Baresip's output lines, as baresip 1.0 prints them.
func TestBaresipLines(t *testing.T) {
	rec := newRecorder(3)
	rec.cutAt.Store(1)
	c := &baresipClients{n: 3, rec: rec, up: make([]bool, 3)}
	for _, l := range []string{
		"baresip is ready.",
		"t0@198.18.0.1: {0/TCP/v4} 200 OK (kamailio (5.6.3 (x86_64/linux))) [1 binding]",
		"\x1b[31mreg: sip:t1@198.18.0.1:5060: 503 Service Unavailable (kamailio (5.6.3 (x86_64/linux)))",
		"\x1b[;m\x1b[31mreg: sip:t2@198.18.0.1:5060: Connection timed out",
		"t9@198.18.0.1: {0/TCP/v4} 200 OK [1 binding]", // not one of ours
		"t2@198.18.0.1: {0/TCP/v4} 401 Unauthorized",
	} {
		c.line(ansiEscape.ReplaceAllString(l, ""), time.Now())
	}
	if c.registered() != 1 || c.oks.Load() != 1 || c.fails.Load() != 2 || c.rejected.Load() != 1 {
		t.Errorf("registered %d, 200s %d, failures %d, 503s %d; want 1, 1, 2, 1",
			c.registered(), c.oks.Load(), c.fails.Load(), c.rejected.Load())
	}
	// Told of the loss: the next 200 of an account is its recovery.
	c.mu.Lock()
	c.lost, c.up[0] = true, false
	c.mu.Unlock()
	c.upN.Store(0)
	rec.lost(0, time.Now())
	c.line("t0@198.18.0.1: {0/TCP/v4} 200 OK [1 binding]", time.Now())
	if rec.recovered.Load() != 1 || c.registered() != 1 {
		t.Errorf("recovered %d, registered %d; want 1, 1", rec.recovered.Load(), c.registered())
	}
}

// Baresip as a real client through the freeze proxy: its accounts register,
// and after the restore the restarted baresip registers every one again on
// a new connection (no 503: the rate is above the herd).
func TestBaresipSmall(t *testing.T) {
	kamailio.Require(t)
	if _, err := exec.LookPath("baresip"); err != nil {
		if os.Getenv(kamailio.EnvRequire) == "1" {
			t.Fatalf("baresip: %v (and %s=1)", err, kamailio.EnvRequire)
		}
		t.Skipf("baresip not installed: %v", err)
	}
	o := &options{n: 5, capacity: 1000, keepAlive: 500 * time.Millisecond, timeout: 500 * time.Millisecond,
		retryAfter: time.Second, hole: 1500 * time.Millisecond, capAfter: 15 * time.Second, baselineCap: 15 * time.Second,
		baresip: "baresip", method: "proxy", strategies: []string{"baresip"}}
	var got []Result
	_, err := run(context.Background(), o, &env{method: "proxy", why: "test"}, func(string, ...any) {},
		func(r Result) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d results", len(got))
	}
	r := got[0]
	t.Logf("%+v", r)
	if r.Stuck != 0 || r.RecoverS <= 0 || r.RecoverS > 10 || r.ServerPerTrunk < 1 {
		t.Errorf("baresip: %d stuck, back in %.2f s, %.2f REGISTERs per trunk at Kamailio", r.Stuck, r.RecoverS, r.ServerPerTrunk)
	}
}

// netnsChildEnv carries the options of TestNetnsChild, run by
// TestRunNetns in the client namespace.
const netnsChildEnv = "RELINK_SIPRECOVERY_TEST_CHILD"

// The netns method end to end, as root: the test binary is run again in the
// client namespace (TestNetnsChild) and this test black-holes the path for
// it with nft; every strategy's row is checked there.
func TestRunNetns(t *testing.T) {
	netns.Require(t)
	kamailio.Require(t)
	if os.Getenv(workerEnv) != "" {
		t.Skip("the child")
	}
	if status := parent([]string{"-test.run=^TestNetnsChild$", "-test.v"}, []string{netnsChildEnv + "=1"}); status != 0 {
		t.Fatalf("the child in the client namespace failed (status %d)", status)
	}
}

// TestNetnsChild is TestRunNetns's body in the client namespace: relink
// recovers every trunk after a real black hole; pjsip-like, whose sipgo
// connection survives the hole, too; naive-worst-case's REGISTERs are
// counted at Kamailio.
func TestNetnsChild(t *testing.T) {
	if os.Getenv(netnsChildEnv) == "" {
		t.Skip("run by TestRunNetns")
	}
	e, err := workerEnvFromPipes(os.Getenv(workerEnv))
	if err != nil {
		t.Fatal(err)
	}
	o := &options{n: 20, capacity: 200, keepAlive: 500 * time.Millisecond, timeout: 500 * time.Millisecond,
		retryAfter: time.Second, capAfter: 10 * time.Second, baselineCap: 15 * time.Second,
		pjsipRetry: time.Minute, pjsipSpread: time.Second, diagoRestart: 5 * time.Second,
		method: "netns", strategies: []string{"relink", "pjsip-like", naiveWorst}}
	var got []Result
	status, err := run(context.Background(), o, e, func(string, ...any) {}, func(r Result) { got = append(got, r) })
	if err != nil {
		t.Fatal(err)
	}
	if status != 0 || len(got) != 3 {
		t.Fatalf("status %d, %d results", status, len(got))
	}
	for _, r := range got {
		t.Logf("%+v", r)
		if r.Method != "netns" || r.ServerPerTrunk < 1 {
			t.Errorf("%s: method %s, %.2f REGISTERs per trunk at Kamailio", r.Strategy, r.Method, r.ServerPerTrunk)
		}
	}
	if got[0].Stuck != 0 || got[1].Stuck != 0 {
		t.Errorf("relink %d stuck, pjsip-like %d stuck; want none", got[0].Stuck, got[1].Stuck)
	}
}
