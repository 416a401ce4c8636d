package liveness

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

// target is a Target with an optional TryProbe, recording what it was
// asked.
type target struct {
	tries, probes atomic.Int64
	try           func() (bool, error) // nil: not a TryProber
	probe         func() error
	unread        int
	h             *harness
}

func (tg *target) Probe() error {
	tg.probes.Add(1)
	if tg.probe != nil {
		return tg.probe()
	}
	return nil
}
func (tg *target) Unread() int      { return tg.unread }
func (tg *target) OnDead(err error) { tg.h.onDead(err) }

type tryTarget struct{ *target }

func (tg tryTarget) TryProbe() (bool, error) {
	tg.tries.Add(1)
	return tg.try()
}

// Many Monitors on one Wheel, with intervals of every length (some beyond
// one turn of the wheel): the silent ones die within Interval + Timeout +
// two ticks of their start (their Timeouts are not whole ticks), the answered ones live; the Wheel's goroutine
// ends with the last Monitor (synctest fails on a leaked goroutine).
func TestWheelManyMonitors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := NewWheel(DefaultTick)
		type mon struct {
			m        *Monitor
			h        *harness
			iv, to   time.Duration
			answered bool
		}
		var mons []*mon
		for i := range 300 {
			mn := &mon{h: newHarness(), iv: time.Duration(1+i%37) * 333 * time.Millisecond,
				to: time.Duration(1+i%5) * 777 * time.Millisecond, answered: i%2 == 0}
			if i%50 == 0 {
				mn.iv = 30 * time.Second // beyond one turn (10.24 s)
			}
			mn.m = New(Config{Interval: mn.iv, Timeout: mn.to, Wheel: w, OnDead: mn.h.onDead,
				Probe: func() error {
					if mn.answered {
						go func() { time.Sleep(50 * time.Millisecond); mn.m.Seen() }()
					}
					return nil
				}})
			mons = append(mons, mn)
		}
		time.Sleep(2 * time.Minute)
		for i, mn := range mons {
			at, err := mn.h.result()
			switch {
			case mn.answered && err != nil:
				t.Errorf("monitor %d (answered) died at %v: %v", i, at, err)
			case !mn.answered && (!errors.Is(err, ErrNoResponse) || at < mn.iv+mn.to || at > mn.iv+mn.to+2*DefaultTick):
				t.Errorf("monitor %d (silent, %v + %v) died at %v: %v", i, mn.iv, mn.to, at, err)
			}
			mn.m.Stop()
		}
	})
}

// A Target's TryProbe runs on the Wheel's goroutine; when it cannot try,
// Probe runs instead; its error declares the peer dead with a ProbeError.
func TestWheelTryProbe(t *testing.T) {
	for _, tc := range []struct {
		name           string
		try            func() (bool, error)
		tries, probes  int64
		wantProbeError bool
	}{
		{"tried", func() (bool, error) { return true, nil }, 1, 0, false},
		{"not tried", func() (bool, error) { return false, nil }, 1, 1, false},
		{"failed", func() (bool, error) { return true, errors.New("broken pipe") }, 1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				tg := &target{try: tc.try, h: newHarness()}
				var m Monitor
				m.Start(interval, timeout, tryTarget{tg}, NewWheel(DefaultTick))
				defer m.Stop()
				time.Sleep(interval + time.Second)
				if tg.tries.Load() != tc.tries || tg.probes.Load() != tc.probes || m.Probes() != 1 {
					t.Fatalf("TryProbe %d, Probe %d, Probes() %d; want %d, %d, 1",
						tg.tries.Load(), tg.probes.Load(), m.Probes(), tc.tries, tc.probes)
				}
				h := tg.h
				h.wait(t, time.Hour)
				at, err := h.result()
				var pe *ProbeError
				if got := errors.As(err, &pe); got != tc.wantProbeError {
					t.Fatalf("OnDead(%v) at %v, want a ProbeError: %v", err, at, tc.wantProbeError)
				}
				if !tc.wantProbeError && (!errors.Is(err, ErrNoResponse) || at != interval+timeout) {
					t.Fatalf("OnDead(%v) at %v, want ErrNoResponse at %v", err, at, interval+timeout)
				}
			})
		})
	}
}

// A Probe that blocks runs on a goroutine of its own: the other Monitors
// on the Wheel keep their times.
func TestWheelBlockingProbeDelaysNoOther(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		w := NewWheel(DefaultTick)
		release := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(release) })
		defer unblock()
		hb := newHarness()
		blocked := New(Config{Interval: interval, Timeout: time.Hour, Wheel: w, OnDead: hb.onDead,
			Probe: func() error { <-release; return nil }})
		defer blocked.Stop()
		h := newHarness()
		New(Config{Interval: interval + time.Second, Timeout: timeout, Wheel: w, OnDead: h.onDead,
			Probe: func() error { return nil }})
		h.wait(t, time.Hour)
		if at, err := h.result(); !errors.Is(err, ErrNoResponse) || at != interval+time.Second+timeout {
			t.Fatalf("OnDead(%v) at %v, want ErrNoResponse at %v", err, at, interval+time.Second+timeout)
		}
	})
}

// The Wheel's goroutine starts with its first Monitor and ends with its
// last, in real time; it starts again for the next one.
func TestWheelGoroutineEndsWithLastMonitor(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	w := NewWheel(time.Millisecond)
	for round := range 2 {
		g0 := runtime.NumGoroutine()
		var ms []*Monitor
		for range 10 {
			ms = append(ms, New(Config{Interval: time.Hour, Timeout: time.Hour, Wheel: w,
				Probe: func() error { return nil }, OnDead: func(error) {}}))
		}
		if g := runtime.NumGoroutine(); g != g0+1 {
			t.Fatalf("round %d: %d goroutines with 10 Monitors, want %d", round, g, g0+1)
		}
		for _, m := range ms {
			m.Stop()
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() != g0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: the Wheel's goroutine outlived its Monitors", round)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// A silent peer on the process's Wheel dies within Interval + Timeout +
// a tick (+ a generous margin for a loaded machine), in real time.
func TestDefaultWheelRealTime(t *testing.T) {
	w := Default()
	if w == nil {
		t.Fatal("Default() is nil outside a bubble")
	}
	const iv, to = 50 * time.Millisecond, 30 * time.Millisecond
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		start := time.Now()
		h := newHarness()
		New(Config{Interval: iv, Timeout: to, Wheel: w, OnDead: h.onDead, Probe: func() error { return nil }})
		wg.Go(func() {
			select {
			case <-h.dead:
			case <-time.After(10 * time.Second):
				errs <- fmt.Errorf("monitor %d: not dead within 10 s", i)
				return
			}
			if d := time.Since(start); d < iv+to || d > iv+to+DefaultTick+500*time.Millisecond {
				errs <- fmt.Errorf("monitor %d: dead after %v, want %v + one tick", i, d, iv+to)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestDefaultIsNilInABubble(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		if w := Default(); w != nil {
			t.Fatal("Default() in a synctest bubble is the process's Wheel")
		}
	})
}
