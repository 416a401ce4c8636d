package backoff

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	cenkalti "github.com/cenkalti/backoff/v4"
)

func seeded() *rand.Rand { return rand.New(rand.NewPCG(1, 2)) }

func TestExponentialJitterBounds(t *testing.T) {
	const draws = 2000
	base, maxD := 100*time.Millisecond, 5*time.Second
	for _, j := range []Jitter{FullJitter, EqualJitter, NoJitter} {
		t.Run(j.String(), func(t *testing.T) {
			var sum [12]float64
			for range draws {
				e := &Exponential{Base: base, Max: maxD, Jitter: j, rand: seeded()}
				e.rand = rand.New(rand.NewPCG(rand.Uint64(), 7))
				for n := range 12 {
					c := min(maxD, time.Duration(float64(base)*math.Pow(2, float64(n))))
					d := e.NextBackOff()
					lo := time.Duration(0)
					switch j {
					case EqualJitter:
						lo = c / 2
					case NoJitter:
						lo = c
					}
					if d < lo || d > c {
						t.Fatalf("attempt %d: %v outside [%v, %v]", n, d, lo, c)
					}
					sum[n] += float64(d) / float64(c)
				}
			}
			// The mean position within the window tells the jitter apart.
			want := map[Jitter]float64{FullJitter: 0.5, EqualJitter: 0.75, NoJitter: 1}[j]
			for n, s := range sum {
				if m := s / draws; math.Abs(m-want) > 0.03 {
					t.Errorf("attempt %d: mean fraction of the window %.3f, want %.2f", n, m, want)
				}
			}
		})
	}
}

func TestExponentialDecorrelatedBounds(t *testing.T) {
	base, maxD := 100*time.Millisecond, 3*time.Second
	e := &Exponential{Base: base, Max: maxD, Jitter: Decorrelated, rand: seeded()}
	prev := base
	sawMax := false
	for n := range 5000 {
		d := e.NextBackOff()
		hi := min(maxD, 3*prev)
		if d < base || d > hi {
			t.Fatalf("draw %d: %v outside [%v, %v]", n, d, base, hi)
		}
		sawMax = sawMax || d > maxD*9/10
		prev = d
	}
	if !sawMax {
		t.Error("decorrelated jitter never approached its cap in 5000 draws")
	}
}

func TestExponentialGrowthAndCap(t *testing.T) {
	e := &Exponential{Base: time.Second, Max: 10 * time.Second, Multiplier: 3, Jitter: NoJitter}
	want := []time.Duration{1, 3, 9, 10, 10, 10}
	for i, w := range want {
		if d := e.NextBackOff(); d != w*time.Second {
			t.Fatalf("attempt %d: %v, want %v", i, d, w*time.Second)
		}
	}
	e.Reset()
	if d := e.NextBackOff(); d != time.Second {
		t.Fatalf("after Reset: %v, want 1s", d)
	}
}

func TestExponentialNeverGivesUpByDefault(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := &Exponential{Jitter: NoJitter}
		for i := range 10000 {
			d := e.NextBackOff()
			if d == Stop {
				t.Fatalf("gave up after %d attempts", i)
			}
			if d != DefaultMax && i > 20 {
				t.Fatalf("attempt %d: %v, want the cap %v", i, d, DefaultMax)
			}
			if i%100 == 0 {
				time.Sleep(time.Hour) // hours pass: cenkalti's default would have stopped at 15 min
			}
		}
	})
}

func TestExponentialLimits(t *testing.T) {
	e := &Exponential{Base: time.Millisecond, MaxAttempts: 3}
	for i := range 3 {
		if e.NextBackOff() == Stop {
			t.Fatalf("stopped early at %d", i)
		}
	}
	if e.NextBackOff() != Stop {
		t.Fatal("did not stop after MaxAttempts")
	}
	synctest.Test(t, func(t *testing.T) {
		e := &Exponential{MaxElapsed: time.Minute}
		if e.NextBackOff() == Stop {
			t.Fatal("stopped at once")
		}
		time.Sleep(time.Minute)
		if e.NextBackOff() != Stop {
			t.Fatal("did not stop after MaxElapsed")
		}
	})
}

func TestExponentialDropsIntoCenkaltiRetry(t *testing.T) {
	calls := 0
	err := cenkalti.Retry(func() error { calls++; return errors.New("no") },
		&Exponential{Base: time.Millisecond, MaxAttempts: 3})
	if err == nil || calls != 4 {
		t.Fatalf("Retry: err=%v calls=%d, want an error after 4 calls", err, calls)
	}
}

func TestExponentialBadConfig(t *testing.T) {
	cases := []Exponential{
		{Base: time.Second, Max: -1, Multiplier: -3},
		{Base: 1, Max: 1, Multiplier: math.NaN()},
		{Base: time.Hour, Max: time.Second, Multiplier: math.Inf(1)},
		{Base: 1000 * time.Hour, Max: 10000 * time.Hour, Multiplier: 1e300},
		{Jitter: Jitter(42)},
	}
	for i, c := range cases {
		c.Jitter = NoJitter
		prev := time.Duration(0)
		for n := range 200 {
			d := c.NextBackOff()
			if d < MinDelay || d > MaxDelay || d < prev {
				t.Fatalf("case %d attempt %d: %v (prev %v): not clamped", i, n, d, prev)
			}
			prev = d
		}
	}
	e := &Exponential{Jitter: Jitter(42)}
	if d := e.NextBackOff(); d < 0 || d > DefaultBase {
		t.Fatalf("unknown jitter: %v, want full jitter within [0, %v]", d, DefaultBase)
	}
}

func TestExponentialSeeded(t *testing.T) {
	a := &Exponential{rand: rand.New(rand.NewPCG(9, 9))}
	b := &Exponential{rand: rand.New(rand.NewPCG(9, 9))}
	for range 50 {
		if x, y := a.NextBackOff(), b.NextBackOff(); x != y {
			t.Fatalf("same seed, different delays: %v vs %v", x, y)
		}
	}
}

func TestFlowRecoveryRFC5626(t *testing.T) {
	f := &FlowRecovery{rand: seeded()}
	if w := f.window(3); w != 240*time.Second {
		t.Fatalf("W(3) = %v, want 240s (30 s × 2^3)", w)
	}
	if w := f.window(10); w != 1800*time.Second {
		t.Fatalf("W(10) = %v, want the 1800 s cap", w)
	}
	for range 1000 {
		f.Reset()
		f.NextBackOff()
		f.NextBackOff()
		if d := f.NextBackOff(); d < 120*time.Second || d > 240*time.Second {
			t.Fatalf("third failure: %v outside [120s, 240s]", d)
		}
	}
	up := &FlowRecovery{SomeFlowUp: func() bool { return true }}
	if w := up.window(1); w != 180*time.Second {
		t.Fatalf("some flow up: W(1) = %v, want 180s (90 s × 2)", w)
	}
	for range 6 {
		f.NextBackOff() // failures 4..9: W reaches the cap
	}
	for range 100 {
		if d := f.NextBackOff(); d < 900*time.Second || d > 1800*time.Second || d == Stop {
			t.Fatalf("capped: %v outside [900s, 1800s]", d)
		}
	}
	custom := &FlowRecovery{BaseAllFailed: time.Second, Max: 4 * time.Second}
	if w := custom.window(5); w != 4*time.Second {
		t.Fatalf("custom cap: %v", w)
	}
	if w := (&FlowRecovery{}).window(-3); w != 30*time.Second {
		t.Fatalf("W(-3) = %v, want W(0)", w)
	}
	off := &FlowRecovery{BaseAllFailed: -1, Max: -5}
	if w := off.window(0); w != MinDelay {
		t.Fatalf("negative base: W(0) = %v, want MinDelay", w)
	}
	if w := off.window(60); w != MaxDelay {
		t.Fatalf("negative max: W(60) = %v, want MaxDelay", w)
	}
}

// A negative value turns a field off, zero means its default.
func TestNegativeIsOff(t *testing.T) {
	off := &Exponential{Base: -1, MaxAttempts: 2}
	if a, b, c := off.NextBackOff(), off.NextBackOff(), off.NextBackOff(); a != 0 || b != 0 || c != Stop {
		t.Fatalf("negative Base: %v %v %v, want 0 0 Stop", a, b, c)
	}
	flat := &Exponential{Base: time.Second, Multiplier: -1, Jitter: NoJitter}
	for range 5 {
		if d := flat.NextBackOff(); d != time.Second {
			t.Fatalf("negative Multiplier: %v, want Base every time", d)
		}
	}
	uncapped := &Exponential{Base: time.Hour, Max: -1, Multiplier: 10, Jitter: NoJitter}
	var got []time.Duration
	for range 3 {
		got = append(got, uncapped.NextBackOff())
	}
	if got[1] != 10*time.Hour || got[2] != MaxDelay {
		t.Fatalf("negative Max: %v, want 1h 10h 24h", got)
	}
	f := &Floor{Policy: &Exponential{Jitter: NoJitter}, Max: -1, Spread: -1}
	f.RetryAfter(2 * time.Hour)
	if d := f.NextBackOff(); d != 2*time.Hour {
		t.Fatalf("negative Floor.Max and Spread: %v, want exactly 2h", d)
	}
	if d := spread(time.Second, -1, nil); d != 0 {
		t.Fatalf("negative spread: %v", d)
	}
}

// NewFactory copies its argument by value: later changes to the caller's
// value change nothing, and each policy has its own state.
func TestNewFactoryCopies(t *testing.T) {
	e := Exponential{Base: time.Second, Jitter: NoJitter}
	e.NextBackOff() // state in the argument is not carried over
	mk := NewFactory(e)
	e.Base = time.Hour
	a, b := mk(), mk()
	if d := a.NextBackOff(); d != time.Second {
		t.Fatalf("first delay %v, want 1s", d)
	}
	if d := a.NextBackOff(); d != 2*time.Second {
		t.Fatalf("second delay %v, want 2s", d)
	}
	if d := b.NextBackOff(); d != time.Second {
		t.Fatalf("the other policy's first delay %v, want 1s: state shared", d)
	}
}

func TestFloorRetryAfter(t *testing.T) {
	f := &Floor{Policy: &Exponential{Base: 10 * time.Millisecond, Jitter: NoJitter}, rand: seeded()}
	if d := f.NextBackOff(); d != 10*time.Millisecond {
		t.Fatalf("no floor: %v", d)
	}
	f.RetryAfter(30 * time.Second)
	d := f.NextBackOff()
	if d < 30*time.Second || d > 36*time.Second {
		t.Fatalf("floor 30s: %v outside [30s, 36s]", d)
	}
	if d := f.NextBackOff(); d > time.Second {
		t.Fatalf("floor applied twice: %v", d)
	}
	f.RetryAfter(time.Duration(math.MaxInt64)) // 10^12 s does not fit a Duration: the largest one does
	if d := f.NextBackOff(); d < time.Hour || d > time.Hour*12/10 {
		t.Fatalf("absurd Retry-After: %v, want clamped to 1h (+20%%)", d)
	}
	f.RetryAfter(-time.Second)
	if d := f.NextBackOff(); d > time.Second {
		t.Fatalf("negative Retry-After raised the delay: %v", d)
	}
	// Clients told the same value do not return together.
	seen := map[time.Duration]bool{}
	for i := range 100 {
		g := &Floor{Policy: &Exponential{Jitter: NoJitter}, rand: rand.New(rand.NewPCG(uint64(i), 1))}
		g.RetryAfter(10 * time.Second)
		seen[g.NextBackOff()] = true
	}
	if len(seen) < 90 {
		t.Fatalf("100 clients told Retry-After 10s came back at only %d distinct times", len(seen))
	}
}
