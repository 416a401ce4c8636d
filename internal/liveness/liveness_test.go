package liveness

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// onWheel makes newMon schedule Monitors on a Wheel of their own (made in
// the test's bubble) instead of runtime timers: TestOnWheel sets it.
var onWheel bool

// newMon is New, on the scheduling the test runs with. On a Wheel the
// Monitor is stopped when the test ends (the Wheel's goroutine ends with
// it).
func newMon(t *testing.T, cfg Config) *Monitor {
	if onWheel {
		cfg.Wheel = NewWheel(DefaultTick)
	}
	m := New(cfg)
	if onWheel {
		t.Cleanup(func() { m.Stop() })
	}
	return m
}

// near reports whether a death at got is the one expected at want: exactly
// on runtime timers, within one tick later on a Wheel (its documented
// granularity).
func near(got, want time.Duration) bool {
	if onWheel {
		return got >= want && got <= want+DefaultTick
	}
	return got == want
}

// TestOnWheel runs the state machine's tests with each Monitor on a Wheel:
// deaths are then up to one tick late (near).
func TestOnWheel(t *testing.T) {
	onWheel = true
	defer func() { onWheel = false }()
	for _, tc := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"SilentPeerDiesAtIntervalPlusTimeout", TestSilentPeerDiesAtIntervalPlusTimeout},
		{"DetectionBoundFromLastByte", TestDetectionBoundFromLastByte},
		{"AnsweringPeerStaysAlive", TestAnsweringPeerStaysAlive},
		{"TrafficSuppressesProbes", TestTrafficSuppressesProbes},
		{"AnswerDuringTimeoutRearms", TestAnswerDuringTimeoutRearms},
		{"StalledReaderIsNotDead", TestStalledReaderIsNotDead},
		{"ProbeError", TestProbeError},
		{"BlockingProbeBoundedByTimeout", TestBlockingProbeBoundedByTimeout},
		{"BlockedProbeNotStacked", TestBlockedProbeNotStacked},
		{"Stop", TestStop},
		{"ClampedDurations", TestClampedDurations},
		{"UnchangedUnreadCountDiesWithinTwiceTheBound", TestUnchangedUnreadCountDiesWithinTwiceTheBound},
	} {
		t.Run(tc.name, tc.f)
	}
}

const (
	interval = 10 * time.Second
	timeout  = 5 * time.Second
)

// harness records what a Monitor does, in virtual time.
type harness struct {
	start  time.Time
	probes atomic.Int64
	mu     sync.Mutex
	deadAt time.Duration // since start; 0 = alive
	err    error
	dead   chan struct{}
}

func newHarness() *harness { return &harness{start: time.Now(), dead: make(chan struct{})} }

func (h *harness) onDead(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		panic("OnDead called twice")
	}
	h.deadAt, h.err = time.Since(h.start), err
	close(h.dead)
}

func (h *harness) result() (time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.deadAt, h.err
}

func TestSilentPeerDiesAtIntervalPlusTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		m := newMon(t, Config{Interval: interval, Timeout: timeout,
			Probe: func() error { h.probes.Add(1); return nil }, OnDead: h.onDead})
		h.wait(t, time.Hour)
		at, err := h.result()
		if !errors.Is(err, ErrNoResponse) {
			t.Fatalf("OnDead(%v), want ErrNoResponse", err)
		}
		if at < interval+timeout || at > interval+timeout+time.Millisecond {
			t.Fatalf("declared dead after %v, want %v", at, interval+timeout)
		}
		if got := h.probes.Load(); got != 1 {
			t.Fatalf("%d probes, want 1", got)
		}
		if m.Stop() {
			t.Fatal("Stop after death reported running")
		}
	})
}

// A peer that stops talking at an arbitrary moment is declared dead exactly
// Interval+Timeout after its last byte, whatever the phase of the timer.
func TestDetectionBoundFromLastByte(t *testing.T) {
	for _, iv := range []struct{ interval, timeout time.Duration }{
		{interval, timeout}, {time.Second, timeout}, {timeout, timeout},
	} {
		for _, lastAt := range []time.Duration{0, time.Millisecond, 3 * time.Second, 9999 * time.Millisecond,
			interval, interval + 1, 12 * time.Second, 14999 * time.Millisecond, 37 * time.Second} {
			t.Run(iv.interval.String()+"/"+lastAt.String(), func(t *testing.T) {
				testDetectionBound(t, iv.interval, iv.timeout, lastAt)
			})
		}
	}
}

func testDetectionBound(t *testing.T, interval, timeout, lastAt time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		var mp atomic.Pointer[Monitor]
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error {
				h.probes.Add(1)
				// Answer every probe while the peer is up.
				if time.Since(h.start) < lastAt {
					go func() { time.Sleep(100 * time.Millisecond); mp.Load().Seen() }()
				}
				return nil
			}})
		mp.Store(m)
		// Traffic every 700 ms until lastAt.
		for time.Since(h.start)+700*time.Millisecond <= lastAt {
			time.Sleep(700 * time.Millisecond)
			m.Seen()
		}
		if d := lastAt - time.Since(h.start); d > 0 {
			time.Sleep(d)
			m.Seen()
		}
		h.wait(t, time.Hour)
		_, err := h.result()
		if !errors.Is(err, ErrNoResponse) {
			t.Fatalf("OnDead(%v)", err)
		}
		// The answer to a probe sent before lastAt may be the last byte.
		if got := time.Since(m.LastSeen()); !near(got, interval+timeout) {
			t.Fatalf("dead %v after the last byte, want %v", got, interval+timeout)
		}
	})
}

func TestAnsweringPeerStaysAlive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		var mp atomic.Pointer[Monitor]
		var wg sync.WaitGroup
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error {
				h.probes.Add(1)
				wg.Go(func() { time.Sleep(200 * time.Millisecond); mp.Load().Seen() }) // the pong
				return nil
			}})
		mp.Store(m)
		time.Sleep(24 * time.Hour)
		if _, err := h.result(); err != nil {
			t.Fatalf("declared dead: %v", err)
		}
		// One probe per Interval+RTT of silence.
		want := int64(24 * time.Hour / (interval + 200*time.Millisecond))
		if got := h.probes.Load(); got < want-1 || got > want+1 {
			t.Fatalf("%d probes in 24 h, want ~%d", got, want)
		}
		if m.Probes() != uint64(h.probes.Load()) {
			t.Fatalf("Probes() = %d, counted %d", m.Probes(), h.probes.Load())
		}
		if !m.Stop() {
			t.Fatal("Stop reported not running")
		}
		wg.Wait()
	})
}

func TestTrafficSuppressesProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error { h.probes.Add(1); return nil }})
		for range 3600 {
			time.Sleep(interval - time.Nanosecond) // just under the interval
			m.Seen()
		}
		if got := h.probes.Load(); got != 0 {
			t.Fatalf("%d probes despite traffic, want 0", got)
		}
		lastByte := time.Now()
		h.wait(t, time.Hour)
		if got := time.Since(lastByte); !near(got, interval+timeout) {
			t.Fatalf("dead %v after traffic stopped, want %v", got, interval+timeout)
		}
		if got := h.probes.Load(); got != 1 {
			t.Fatalf("%d probes, want 1", got)
		}
	})
}

func TestAnswerDuringTimeoutRearms(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error { h.probes.Add(1); return nil }})
		time.Sleep(interval + timeout - time.Millisecond) // probe sent at 10 s
		m.Seen()                                          // answered at 14.999 s
		h.wait(t, time.Hour)                              // next probe at 24.999 s, death at 29.999 s
		at, _ := h.result()
		if want := 2*(interval+timeout) - time.Millisecond; !near(at, want) {
			t.Fatalf("dead at %v, want %v", at, want)
		}
		if got := h.probes.Load(); got != 2 {
			t.Fatalf("%d probes, want 2", got)
		}
	})
}

func TestStalledReaderIsNotDead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		var unreadCalls atomic.Int64
		caughtUp := atomic.Bool{}
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error { h.probes.Add(1); return nil },
			Unread: func() int { // the peer answers each probe; nobody reads
				n := unreadCalls.Add(1)
				if caughtUp.Load() {
					return 0
				}
				return int(n)
			}})
		defer m.Stop()
		time.Sleep(time.Hour)
		if _, err := h.result(); err != nil {
			t.Fatalf("declared dead while answers kept arriving unread: %v", err)
		}
		if unreadCalls.Load() == 0 {
			t.Fatal("Unread never asked")
		}
		caughtUp.Store(true) // the reader caught up; the peer is silent
		m.Seen()
		t0 := time.Now()
		h.wait(t, time.Hour)
		if got := time.Since(t0); got > interval+timeout {
			t.Fatalf("dead %v after the reader caught up, want ≤ %v", got, interval+timeout)
		}
	})
}

func TestProbeError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		boom := errors.New("boom")
		newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error { return boom }})
		h.wait(t, time.Hour)
		at, err := h.result()
		var pe *ProbeError
		if !errors.As(err, &pe) || !errors.Is(err, boom) {
			t.Fatalf("OnDead(%v), want *ProbeError wrapping boom", err)
		}
		if at != interval {
			t.Fatalf("dead at %v, want %v (at the failed probe)", at, interval)
		}
	})
}

func TestBlockingProbeBoundedByTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		release := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(release) })
		defer unblock() // also when the test fails with the probe blocked
		var inProbe, maxInProbe atomic.Int64
		newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error {
				n := inProbe.Add(1)
				if n > maxInProbe.Load() {
					maxInProbe.Store(n)
				}
				h.probes.Add(1)
				<-release
				inProbe.Add(-1)
				return errors.New("late")
			}})
		h.wait(t, time.Hour)
		at, err := h.result()
		if !errors.Is(err, ErrNoResponse) || at != interval+timeout {
			t.Fatalf("OnDead(%v) at %v, want ErrNoResponse at %v", err, at, interval+timeout)
		}
		unblock() // the probe returns after death: no second OnDead
		time.Sleep(time.Minute)
		if maxInProbe.Load() != 1 || h.probes.Load() != 1 {
			t.Fatalf("probes %d, max concurrent %d; want 1, 1", h.probes.Load(), maxInProbe.Load())
		}
	})
}

// A blocked probe is not stacked: while it blocks, traffic keeps the
// monitor alive and no second Probe call starts.
func TestBlockedProbeNotStacked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		release := make(chan struct{})
		unblock := sync.OnceFunc(func() { close(release) })
		defer unblock() // also when the test fails with the probe blocked
		var calls atomic.Int64
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error {
				if calls.Add(1) == 1 {
					<-release
				}
				return nil
			}})
		for range 100 {
			time.Sleep(time.Second)
			m.Seen()
		}
		// Silence: the first probe is still blocked, so no new call starts,
		// but the timeout still declares death.
		h.wait(t, time.Hour)
		if got := calls.Load(); got != 1 {
			t.Fatalf("%d Probe calls, want 1 (never stacked)", got)
		}
		unblock()
	})
}

func TestStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe: func() error { h.probes.Add(1); return nil }})
		time.Sleep(interval + time.Second) // probing
		if !m.Stop() {
			t.Fatal("first Stop reported not running")
		}
		if m.Stop() {
			t.Fatal("second Stop reported running")
		}
		time.Sleep(time.Hour)
		if _, err := h.result(); err != nil {
			t.Fatalf("OnDead after Stop: %v", err)
		}
	})
}

func TestClampedDurations(t *testing.T) {
	for _, d := range []time.Duration{-time.Hour, -1, 0, 1, time.Microsecond} {
		t.Run(d.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness()
				m := newMon(t, Config{Interval: d, Timeout: d, OnDead: h.onDead,
					Probe: func() error { h.probes.Add(1); return nil }})
				if got := m.String(); got != "liveness.Monitor{Interval: 10ms, Timeout: 10ms}" {
					t.Fatalf("String() = %q", got)
				}
				h.wait(t, time.Hour)
				if at, _ := h.result(); at != 2*MinInterval {
					t.Fatalf("dead at %v, want %v", at, 2*MinInterval)
				}
			})
		})
	}
}

func TestNewPanicsWithoutCallbacks(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("New without Probe/OnDead did not panic")
		}
	}()
	New(Config{})
}

func TestSeenDoesNotAllocate(t *testing.T) {
	m := newMon(t, Config{Interval: time.Hour, Timeout: time.Hour, Probe: func() error { return nil }, OnDead: func(error) {}})
	defer m.Stop()
	if n := testing.AllocsPerRun(1000, m.Seen); n != 0 {
		t.Fatalf("Seen allocates %v times", n)
	}
}

func BenchmarkSeen(b *testing.B) {
	m := New(Config{Interval: time.Hour, Timeout: time.Hour, Probe: func() error { return nil }, OnDead: func(error) {}})
	defer m.Stop()
	b.ReportAllocs()
	for b.Loop() {
		m.Seen()
	}
}

// wait returns when OnDead has been called, and fails the test if it has not
// been within d (virtual time under synctest, so a broken Monitor fails in
// moments instead of hanging until the test timeout).
func (h *harness) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-h.dead:
	case <-time.After(d):
		t.Fatalf("OnDead not called within %v", d)
	}
}

// An unread count that does not change excuses the reader once: a peer that
// sent one byte the application never reads, then hung, dies within twice
// Interval + Timeout of its byte (issue 10, defect 4).
func TestUnchangedUnreadCountDiesWithinTwiceTheBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness()
		m := newMon(t, Config{Interval: interval, Timeout: timeout, OnDead: h.onDead,
			Probe:  func() error { h.probes.Add(1); return nil },
			Unread: func() int { return 1 }}) // one byte, never read
		defer m.Stop()
		h.wait(t, 20*(interval+timeout))
		at, err := h.result()
		if !errors.Is(err, ErrNoResponse) || at > 2*(interval+timeout) {
			t.Fatalf("OnDead(%v) after %v, want ErrNoResponse within %v", err, at, 2*(interval+timeout))
		}
	})
}
