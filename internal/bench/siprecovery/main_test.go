package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/kamailio"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A small run of every strategy against a real Kamailio, through the freeze
// proxy (no root needed): relink's trunks all notice the silent path within
// the bound and all register again after the restore, with every figure of
// the result filled in; sipgo's naive client keeps using the dead pooled
// connection (the proxy forgot it), so none of its trunks is back by the cap.
func TestRunSmall(t *testing.T) {
	kamailio.Require(t)
	o := &options{n: 20, capacity: 100, keepAlive: 500 * time.Millisecond, timeout: 500 * time.Millisecond,
		retryAfter: time.Second, hole: 1500 * time.Millisecond, capAfter: 8 * time.Second,
		method: "proxy", strategies: []string{"relink", "relink-rate", "naive"}}
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
	if len(got) != 3 {
		t.Fatalf("%d results, want 3", len(got))
	}
	for _, r := range got {
		t.Logf("%+v", r)
		if r.N != o.n || r.Capacity != o.capacity || r.BoundS != 1 || r.Method != "proxy" || r.RetryAfterS != 1 {
			t.Errorf("%s: header fields %+v", r.Strategy, r)
		}
		if r.Strategy == "naive" {
			// sipgo never evicts the connection the proxy forgot: every
			// REGISTER waits for Timer B (32 s) on it.
			if r.Stuck != o.n {
				t.Errorf("naive: %d stuck, want all %d (sipgo reuses the dead connection)", r.Stuck, o.n)
			}
			if r.TransactionsPerTrunk < 1 {
				t.Errorf("naive: %.2f REGISTERs per trunk, want ≥ 1", r.TransactionsPerTrunk)
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
		"transactions_per_trunk", "stuck", "bound_s"} {
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
		"none":     func(o *options) { o.strategies = nil },
	} {
		o := ok
		mod(&o)
		if o.validate() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
