package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestScaleSmall runs both rows at a tiny size (no root needed): 20 trunks
// that register, stay idle and refresh once; 50 connections probed every
// 200 ms. It checks that each figure was measured, not that it meets the
// issue's targets (a tiny run is dominated by fixed costs).
func TestScaleSmall(t *testing.T) {
	o, err := parseFlags([]string{"-trunks", "20", "-conns", "50", "-ports", "2", "-expires", "16s",
		"-conn-window", "1s", "-probe-interval", "200ms", "-timeout", "60s", "-pprof", t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var tr *TrunksResult
	var cr *ConnsResult
	err = run(o, func(v any) {
		switch r := v.(type) {
		case *TrunksResult:
			tr = r
		case *ConnsResult:
			cr = r
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if tr == nil || cr == nil {
		t.Fatalf("rows: trunks %v, conns %v", tr, cr)
	}
	t.Logf("trunks: %+v", *tr)
	t.Logf("conns: %+v", *cr)
	checkTrunks(t, tr)
	checkConns(t, cr)
}

func checkTrunks(t *testing.T, r *TrunksResult) {
	t.Helper()
	if r.Trunks != 20 || r.Flows != 1 || r.RegisterAllS <= 0 || r.RegisterAllS > 30 {
		t.Errorf("trunks %d on %d flows, registered in %.2f s", r.Trunks, r.Flows, r.RegisterAllS)
	}
	if r.IdleTx != 0 || r.TxPerRefresh < 1 || r.IdleWindowS < 4 || r.RefreshWindowS <= 0 {
		t.Errorf("idle window %.1f s with %d REGISTERs; refresh window %.1f s, %.2f REGISTERs per trunk",
			r.IdleWindowS, r.IdleTx, r.RefreshWindowS, r.TxPerRefresh)
	}
	// A fixed cost (the UA, the gate, the registrar's flow) over 20 trunks.
	if r.HeapPerTrunkKiB <= 0 || r.GoroutinesPerTrunk < 1 || r.GoroutinesPerTrunk > 3 {
		t.Errorf("%.1f KiB and %.2f goroutines per trunk", r.HeapPerTrunkKiB, r.GoroutinesPerTrunk)
	}
	// getrusage counts in scheduler ticks: 20 idle trunks may cost none.
	if r.CPUSPerTrunkHour < 0 || r.CPUSPerTrunkHourMeasured < r.CPUSPerTrunkHour || r.RegistrarRegisters < 60 {
		t.Errorf("CPU %.4f s per trunk-hour (%.4f at %v s); registrar saw %d REGISTERs", r.CPUSPerTrunkHour,
			r.CPUSPerTrunkHourMeasured, r.ExpiresS, r.RegistrarRegisters)
	}
}

func checkConns(t *testing.T, r *ConnsResult) {
	t.Helper()
	if r.Conns != 50 || r.Dead != 0 || r.DeadAtHeap != 0 || r.WindowS < 1 {
		t.Errorf("%d conns, %d dead, window %.2f s", r.Conns, r.Dead, r.WindowS)
	}
	// 50 connections probed every 200 ms (and more after a pong): 250/s at
	// most (a little more: the interval restarts at the pong), not much less on a loaded machine.
	if r.ProbesPerS < 50 || r.ProbesPerS > 400 {
		t.Errorf("%.0f probes/s, want about 250", r.ProbesPerS)
	}
	// The floor's run wrote each connection once per interval: 250/s.
	if r.WritesPerS < 50 || r.WritesPerS > 400 || r.DeadWrites != 0 {
		t.Errorf("floor: %.0f writes/s (want about 250), %d dead", r.WritesPerS, r.DeadWrites)
	}
	// relink's Conn has no goroutine of its own (the process's timing
	// wheel has one, 0.02 per connection here).
	if r.GoroutinesPerConn > 0.1 || r.HeapPerConnB <= 0 || r.HeapPerConnTotalB <= r.HeapPerConnB {
		t.Errorf("%.2f goroutines and %.0f B (of %.0f B) per connection", r.GoroutinesPerConn, r.HeapPerConnB,
			r.HeapPerConnTotalB)
	}
	if r.WrappedCPUPct <= 0 {
		t.Errorf("wrapped run used no CPU")
	}
}

// TestMain checks for leaked goroutines, unless the test binary was started
// as one of the command's child processes (a registrar, an echo server or a
// measured client): then it is the command.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "1" {
		goleak.VerifyTestMain(m)
		return
	}
	main()
}
