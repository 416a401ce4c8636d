package backoff

import (
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	cenkalti "github.com/cenkalti/backoff/v4"
)

// Stop is the value NextBackOff returns when a policy has given up. It is
// cenkalti/backoff's Stop, so the policies here drop into backoff.Retry.
const Stop time.Duration = cenkalti.Stop

// BackOff is cenkalti/backoff/v4's interface, which every policy here
// satisfies: NextBackOff returns the delay before the next attempt (or Stop),
// Reset starts over.
type BackOff = cenkalti.BackOff

// Bounds applied to every duration in this package, so that a typo or a
// peer's absurd value can never park a caller for ever or spin it in a busy
// loop. (Only an explicit negative Exponential.Base, which turns the delay
// off, returns zero delays.)
const (
	// MaxDelay is the largest delay any policy here returns: 24 hours.
	MaxDelay = 24 * time.Hour
	// MinDelay is the smallest positive base any policy accepts: 1 ms.
	MinDelay = time.Millisecond
)

// Jitter selects how Exponential randomizes its delays. Jitter is on by
// default because clients that back off in lockstep come back in lockstep:
// after a shared outage the herd would hit the server at the same instant,
// every time.
type Jitter int

const (
	// FullJitter waits a uniform random time in [0, min(Max, Base·Multiplier^n)].
	// It spreads a herd the most and is the default.
	FullJitter Jitter = iota
	// EqualJitter waits half the capped exponential delay plus a uniform
	// random time in [0, half of it]: never shorter than half.
	EqualJitter
	// Decorrelated waits min(Max, uniform random in [Base, 3·previous delay]).
	Decorrelated
	// NoJitter waits exactly min(Max, Base·Multiplier^n). Use it only when a
	// single client retries against its own resource.
	NoJitter
)

// String returns the jitter mode's name.
func (j Jitter) String() string {
	switch j {
	case FullJitter:
		return "full"
	case EqualJitter:
		return "equal"
	case Decorrelated:
		return "decorrelated"
	case NoJitter:
		return "none"
	}
	return "jitter(" + strconv.Itoa(int(j)) + ")"
}

// Defaults of Exponential.
const (
	DefaultBase       = 500 * time.Millisecond
	DefaultMax        = 60 * time.Second
	DefaultMultiplier = 2.0
)

// Exponential is an exponential backoff with jitter, the formulas of AWS's
// "Exponential Backoff and Jitter": the n-th delay (n from 0) is drawn from
// min(Max, Base·Multiplier^n) according to Jitter.
//
// The zero value is ready to use with the documented defaults; in every
// numeric field zero means the default and a negative value turns the
// feature off, as each field says. Unlike
// cenkalti/backoff's ExponentialBackOff (which gives up after 15 minutes by
// default), Exponential never gives up unless MaxAttempts or MaxElapsed is set.
//
// An Exponential holds the attempt count and is not safe for concurrent use:
// give each retry loop its own (see NewFactory). Configuration fields must not
// change after the first call to NextBackOff.
type Exponential struct {
	// Base is the first delay's cap. Zero means DefaultBase (500 ms);
	// negative turns the delay off (every NextBackOff returns 0, until a
	// limit returns Stop); positive values below MinDelay are raised to it.
	Base time.Duration
	// Max caps every delay. Zero means DefaultMax (60 s); negative turns
	// the cap off (MaxDelay, 24 h, still applies). It is raised to Base if
	// smaller and lowered to MaxDelay if larger.
	Max time.Duration
	// Multiplier is the growth factor per attempt. Zero means
	// DefaultMultiplier (2); negative turns growth off (1: every delay is
	// drawn from Base); values between 0 and 1 mean 1; NaN and infinities
	// mean 2; values above 10 are lowered to 10.
	Multiplier float64
	// Jitter selects the randomization; the zero value is FullJitter. An
	// unknown value means FullJitter.
	Jitter Jitter
	// MaxAttempts, when positive, makes NextBackOff return Stop once it has
	// returned that many delays. Zero (the default) and negative turn the
	// limit off: never give up.
	MaxAttempts int
	// MaxElapsed, when positive, makes NextBackOff return Stop once this
	// long has passed since the first NextBackOff after a Reset. Zero (the
	// default) and negative turn the limit off: never give up.
	MaxElapsed time.Duration

	// rand is the source of randomness for tests; nil means the
	// process-wide source.
	rand *rand.Rand

	attempt int
	prev    time.Duration
	start   time.Time
}

var _ BackOff = (*Exponential)(nil)

func (e *Exponential) base() time.Duration {
	switch {
	case e.Base == 0:
		return DefaultBase
	case e.Base < 0:
		return 0
	case e.Base < MinDelay:
		return MinDelay
	case e.Base > MaxDelay:
		return MaxDelay
	}
	return e.Base
}

func (e *Exponential) max() time.Duration {
	m := e.Max
	switch {
	case m == 0:
		m = DefaultMax
	case m < 0:
		m = MaxDelay
	}
	if m > MaxDelay {
		m = MaxDelay
	}
	if b := e.base(); m < b {
		m = b
	}
	return m
}

func (e *Exponential) multiplier() float64 {
	m := e.Multiplier
	switch {
	case m == 0, math.IsNaN(m), math.IsInf(m, 0):
		return DefaultMultiplier
	case m < 1:
		return 1
	case m > 10:
		return 10
	}
	return m
}

// Reset starts the sequence over: the next delay is drawn from Base again.
func (e *Exponential) Reset() {
	e.attempt = 0
	e.prev = 0
	e.start = time.Time{}
}

// NextBackOff returns the delay before the next attempt, or Stop when a
// configured limit has been reached.
func (e *Exponential) NextBackOff() time.Duration {
	now := time.Now()
	if e.start.IsZero() {
		e.start = now
	}
	if e.MaxAttempts > 0 && e.attempt >= e.MaxAttempts {
		return Stop
	}
	if e.MaxElapsed > 0 && now.Sub(e.start) >= e.MaxElapsed {
		return Stop
	}
	d := e.next()
	e.attempt++
	return d
}

func (e *Exponential) next() time.Duration {
	base, max := e.base(), e.max()
	if base == 0 {
		return 0
	}
	r := e.rand
	if e.Jitter == Decorrelated {
		prev := e.prev
		if prev < base {
			prev = base
		}
		hi := float64(prev) * 3
		if hi > float64(max) {
			hi = float64(max)
		}
		d := time.Duration(float64(base) + uniform(r)*(hi-float64(base)))
		e.prev = clampDur(d, base, max)
		return e.prev
	}
	c := capped(base, max, e.multiplier(), e.attempt)
	switch e.Jitter {
	case NoJitter:
		return c
	case EqualJitter:
		half := float64(c) / 2
		return time.Duration(half + uniform(r)*half)
	default:
		return time.Duration(uniform(r) * float64(c))
	}
}

// capped returns min(max, base·mult^n) without overflowing.
func capped(base, max time.Duration, mult float64, n int) time.Duration {
	v := float64(base) * math.Pow(mult, float64(n))
	if math.IsInf(v, 0) || math.IsNaN(v) || v >= float64(max) {
		return max
	}
	return time.Duration(v)
}

func clampDur(d, lo, hi time.Duration) time.Duration {
	if d < lo {
		return lo
	}
	if d > hi {
		return hi
	}
	return d
}

// uniform returns a uniform float64 in [0, 1) from r, or from the
// process-wide source when r is nil.
func uniform(r *rand.Rand) float64 {
	if r == nil {
		return rand.Float64()
	}
	return r.Float64()
}

// Defaults of FlowRecovery, from RFC 5626 §4.5.
const (
	DefaultFlowBaseAllFailed = 30 * time.Second
	DefaultFlowBaseSomeOK    = 90 * time.Second
	DefaultFlowMax           = 1800 * time.Second
)

// FlowRecovery is RFC 5626 §4.5's policy for replacing a failed flow: after
// the n-th consecutive failure, W = min(Max, base·2^n) and the wait is a
// uniform random time in [W/2, W]; base is BaseAllFailed (30 s) when every
// flow of the user agent has failed and BaseSomeOK (90 s) when some flow is
// still up. The RFC's first replacement attempt, made at once, is the caller's
// business: NextBackOff is called after an attempt has failed.
//
// The zero value is ready to use with the RFC's numbers; zero means the
// default in every field, negative turns the field off as it says. A
// FlowRecovery holds the failure count and is not safe for concurrent use.
type FlowRecovery struct {
	// BaseAllFailed is the base time when all flows have failed. Zero
	// means 30 s; negative turns the base off (MinDelay, 1 ms: the waits
	// are the doubling alone); at most MaxDelay.
	BaseAllFailed time.Duration
	// BaseSomeOK is the base time when some other flow is up. Zero means
	// 90 s; negative turns the base off (MinDelay); at most MaxDelay.
	BaseSomeOK time.Duration
	// Max is the max-time. Zero means 1800 s; negative turns the cap off
	// (MaxDelay, 24 h, still applies). At least the base in use.
	Max time.Duration
	// SomeFlowUp reports whether another flow of the user agent is up; nil
	// means none is (the common case of one registrar).
	SomeFlowUp func() bool

	// rand is the source of randomness for tests; nil means the
	// process-wide source.
	rand *rand.Rand

	failures int
}

var _ BackOff = (*FlowRecovery)(nil)

// Reset forgets the failures: call it when a flow has been established.
func (f *FlowRecovery) Reset() { f.failures = 0 }

// window returns W for the given number of consecutive failures, without
// jitter.
func (f *FlowRecovery) window(failures int) time.Duration {
	base := orOff(f.BaseAllFailed, DefaultFlowBaseAllFailed, MinDelay)
	if f.SomeFlowUp != nil && f.SomeFlowUp() {
		base = orOff(f.BaseSomeOK, DefaultFlowBaseSomeOK, MinDelay)
	}
	base = clampDur(base, MinDelay, MaxDelay)
	max := clampDur(orOff(f.Max, DefaultFlowMax, MaxDelay), MinDelay, MaxDelay)
	if max < base {
		max = base
	}
	if failures < 0 {
		failures = 0
	}
	return capped(base, max, 2, failures)
}

// NextBackOff counts one more failure and returns a uniform random wait in
// [W/2, W]. It never returns Stop.
func (f *FlowRecovery) NextBackOff() time.Duration {
	if f.failures < 64 {
		f.failures++
	}
	w := float64(f.window(f.failures))
	return time.Duration(w/2 + uniform(f.rand)*w/2)
}

// DefaultRetryAfterSpread and DefaultMaxRetryAfter are Floor's defaults.
const (
	DefaultRetryAfterSpread = 0.2
	DefaultMaxRetryAfter    = time.Hour
)

// Floor wraps a policy and raises its next delay to a server's Retry-After.
// After RetryAfter(d), the next NextBackOff returns at least d plus a uniform
// random spread in [0, Spread·d], so that clients told the same value do not
// come back at the same instant. The floor applies once; later delays are the
// wrapped policy's.
//
// Floor is safe for concurrent use: a response handler may call RetryAfter
// while the retry loop calls NextBackOff. The wrapped policy is called under
// Floor's lock.
type Floor struct {
	// Policy is the wrapped policy; nil means a zero Exponential.
	Policy BackOff
	// Spread is the fraction of the Retry-After added at random. Zero means
	// DefaultRetryAfterSpread (0.2); negative turns the spread off; at most
	// 1.
	Spread float64
	// Max clamps a Retry-After: zero means DefaultMaxRetryAfter (1 h), so
	// that an absurd value (10^12 s) does not park a client for ever;
	// negative turns the clamp off (MaxDelay, 24 h, still applies).
	Max time.Duration

	// rand is the source of randomness for tests; nil means the
	// process-wide source.
	rand *rand.Rand

	mu    sync.Mutex
	floor time.Duration
}

var _ BackOff = (*Floor)(nil)

// RetryAfter sets the floor of the next delay. A value of zero or less is
// ignored; larger values are clamped to Max.
func (f *Floor) RetryAfter(d time.Duration) {
	if d <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	d = min(d, clampDur(orOff(f.Max, DefaultMaxRetryAfter, MaxDelay), MinDelay, MaxDelay))
	f.floor = max(f.floor, d)
}

// NextBackOff returns the wrapped policy's delay, raised to the pending
// Retry-After floor (plus spread) if there is one. Stop from the wrapped
// policy is passed through.
func (f *Floor) NextBackOff() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.policy().NextBackOff()
	if d == Stop || f.floor <= 0 {
		return d
	}
	fl := f.floor
	f.floor = 0
	fl += spread(fl, f.Spread, f.rand)
	return max(d, fl)
}

// Reset resets the wrapped policy and forgets a pending floor.
func (f *Floor) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.floor = 0
	f.policy().Reset()
}

func (f *Floor) policy() BackOff {
	if f.Policy == nil {
		f.Policy = &Exponential{}
	}
	return f.Policy
}

// spread returns a uniform random duration in [0, frac·d]: the jitter added
// to a server-given delay. frac zero (or NaN) means DefaultRetryAfterSpread,
// negative means none, above 1 means 1.
func spread(d time.Duration, frac float64, r *rand.Rand) time.Duration {
	switch {
	case frac == 0 || math.IsNaN(frac):
		frac = DefaultRetryAfterSpread
	case frac < 0:
		return 0
	case frac > 1:
		frac = 1
	}
	return time.Duration(uniform(r) * frac * float64(d))
}

// Factory makes a fresh policy for each retry loop; Link and Trunk take one
// because a policy holds per-loop state.
type Factory func() BackOff

// NewFactory returns a Factory whose policies are copies of e: its
// configuration, copied by value when NewFactory is called (changing the
// caller's e later changes nothing), and a fresh state each.
func NewFactory(e Exponential) Factory {
	e.Reset()
	e.rand = nil // a *rand.Rand is not safe for concurrent use: never shared
	return func() BackOff {
		c := e
		return &c
	}
}
