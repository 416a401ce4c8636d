package sip

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
)

// TestFleetStopAtCapacityLeavesNoBinding: a fleet that stops while its
// registrar serves 5 REGISTERs per second (503 Retry-After beyond) removes
// every binding with the default UnregisterTimeout (5 s), although its
// herd needs longer than that at the registrar's pace: "learned", the
// gate learned the capacity while the trunks registered and paces the
// stop under it; "unlearned", the capacity falls as the fleet stops, and
// the stop's herd draws 503s. (Before: the trunks still queued at the
// gate, or pausing for a 503, when their fixed 5 s bound ended gave up,
// and their bindings stayed until they expired: 2 in the faults row
// 503-storm.)
func TestFleetStopAtCapacityLeavesNoBinding(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		n       int
		learned bool
	}{
		{name: "learned", n: 30, learned: true},
		{name: "unlearned", n: 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rc := registrar.Config{Password: testPassword, MinExpires: -1, RetryAfter: time.Second}
			if tc.learned {
				rc.Capacity = 5
			}
			reg := newRegistrar(t, rc)
			f := NewFleet(newTestUA(t), FleetConfig{})
			for i := range tc.n {
				if _, err := f.Add(fleetTrunk(i, reg.URI())); err != nil {
					t.Fatal(err)
				}
			}
			stop := running(t, f)
			waitFleet(t, f, Registered, tc.n, 30*time.Second)
			reg.SetCapacity(5)
			before := reg.Stats()
			start := time.Now()
			if err := stop(); !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
			took := time.Since(start)
			st := reg.Stats()
			t.Logf("stopped %d trunks in %v; 503s during the stop: %d; gate %+v", tc.n, took,
				st.ByStatus[503]-before.ByStatus[503], f.GateStats())
			if st.Bindings != 0 {
				t.Errorf("%d bindings left after Run, want 0", st.Bindings)
			}
		})
	}
}

// TestUnregisterGivesUpOnLongRetryAfter: a 503 whose Retry-After the bound
// cannot hold ends the unregistration at once (logged), rather than
// waiting the bound out in vain; a registrar that stops answering costs
// one bound, not the cap; and a 503 without Retry-After is retried after
// the trunk's backoff within the bound (before: at once, as fast as the
// gate admitted).
func TestUnregisterGivesUpOnLongRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		fault func(*registrar.Registrar)
		min   time.Duration
		max   time.Duration
		log   string
		regs  uint64 // at most this many REGISTERs during the stop; 0: any
	}{
		{name: "retry-after 60 s", fault: func(r *registrar.Registrar) { r.SetOverload(time.Minute) },
			max: time.Second, log: "Retry-After beyond its bound"},
		{name: "silent", fault: func(r *registrar.Registrar) { r.SetSilent(true) },
			min: time.Second, max: 3 * time.Second, log: "binding stays until it expires"},
		// A 503 without Retry-After pauses nobody: the unregistration
		// retries after the trunk's backoff, not at the gate's pace.
		{name: "503 without retry-after", fault: func(r *registrar.Registrar) { r.SetOverload(0) },
			min: time.Second, max: 3 * time.Second, log: "binding stays until it expires", regs: 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
			var logs testkit.SyncBuffer
			tr, _ := trunkOn(t, TrunkConfig{UnregisterTimeout: time.Second, RequestTimeout: 10 * time.Second,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))}, reg.URI())
			stop := running(t, tr)
			waitState(t, tr, Registered, 5*time.Second)
			tc.fault(reg)
			before := reg.Stats().Registers
			start := time.Now()
			stop()
			took := time.Since(start)
			if n := reg.Stats().Registers - before; tc.regs > 0 && n > tc.regs {
				t.Errorf("%d REGISTERs during the stop, want at most %d", n, tc.regs)
			}
			if took < tc.min || took > tc.max {
				t.Errorf("Run returned %v after the stop, want %v to %v", took, tc.min, tc.max)
			}
			if !strings.Contains(logs.String(), tc.log) {
				t.Errorf("no %q in the log:\n%s", tc.log, logs.String())
			}
		})
	}
}
