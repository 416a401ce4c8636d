package main

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// smallOptions is a tiny matrix: 5 trunks, 2 Links, probes every second.
func smallOptions() *options {
	return &options{trunks: 5, links: 2, keepAlive: time.Second, timeout: time.Second,
		capAfter: 20 * time.Second, settle: time.Second, logger: slog.New(slog.DiscardHandler), env: "embedded"}
}

// TestCheapRows runs three rows of the matrix without root and checks that
// each meets issue 14's "must show" (Pass) with its figures measured: a reset
// noticed within 1 s by trunks and Links, a half-closing Link peer, and a
// fleet stopped while its REGISTERs were held, leaving no binding.
func TestCheapRows(t *testing.T) {
	o := smallOptions()
	for _, name := range []string{"peer-rst", "link-half-close", "stop-mid-register"} {
		t.Run(name, func(t *testing.T) {
			rs, err := pick(name)
			if err != nil || len(rs) != 1 {
				t.Fatalf("pick(%q) = %v, %v", name, rs, err)
			}
			res := runRow(context.Background(), o, rs[0])
			t.Logf("%+v", res)
			if !res.Pass || res.Env != "embedded" {
				t.Errorf("%s: env %q, problems %v", name, res.Env, res.Problems)
			}
			if want := res.Trunks + res.Links; want == 0 || res.Recovered != want {
				t.Errorf("%s: recovered %d of %d trunks + links", name, res.Recovered, want)
			}
			if name != "stop-mid-register" && (res.DetectP99S == nil || res.BoundS == nil) {
				t.Errorf("%s: detection not measured: %v, bound %v", name, res.DetectP99S, res.BoundS)
			}
		})
	}
}

// TestJudge checks that a row missing any "must show" item fails.
func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Result
	}{
		{"not recovered", Result{Trunks: 2, Recovered: 1}},
		{"stuck", Result{Trunks: 1, Recovered: 1, Stuck: 1}},
		{"orphan", Result{Trunks: 1, Recovered: 1, OrphanBindings: 1}},
		{"stale", Result{Trunks: 1, Recovered: 1, StaleRegistered: 1}},
		{"false death", Result{Trunks: 1, Recovered: 1, FalseDeaths: 1}},
		{"slow", Result{Trunks: 1, Recovered: 1, DetectP99S: ptr(3.2), BoundS: ptr(3)}},
	} {
		judge(&tc.r)
		if tc.r.Pass || len(tc.r.Problems) != 1 {
			t.Errorf("%s: pass %v, problems %v", tc.name, tc.r.Pass, tc.r.Problems)
		}
	}
	ok := Result{Trunks: 1, Links: 1, Recovered: 2, DetectP99S: ptr(3.05), BoundS: ptr(3)}
	if judge(&ok); !ok.Pass {
		t.Errorf("within bound + 0.1 s: problems %v", ok.Problems)
	}
}

// TestPickUnknown checks that -fault refuses a name not in the matrix.
func TestPickUnknown(t *testing.T) {
	if _, err := pick("peer-rst,nope"); err == nil {
		t.Error("pick accepted an unknown row")
	}
}
