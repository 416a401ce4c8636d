package ratelimit

import (
	"math"
	"time"
)

// Bucket is a token bucket: it admits rate requests per second on average
// and up to burst at once, and rejects the rest at once (a server that
// answers 503 when it is over its limit). It starts full. The zero value, a
// rate ≤ 0, admits everything. A Bucket is not safe for concurrent use: its
// callers hold their own lock, as with Window.
type Bucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time // the last Admit; zero before the first
}

// NewBucket returns a full Bucket admitting rate per second with depth burst
// (at least 1).
func NewBucket(rate, burst float64) *Bucket {
	b := &Bucket{}
	b.SetRate(rate, burst)
	b.tokens = b.burst
	return b
}

// SetRate changes the rate (requests per second; ≤ 0 is unlimited) and the
// depth (at least 1). Tokens saved beyond the new depth are dropped.
func (b *Bucket) SetRate(rate, burst float64) {
	b.rate, b.burst = rate, math.Max(1, burst)
	b.tokens = math.Min(b.tokens, b.burst)
}

// Admit reports whether a request fits at now, and takes its token if so.
// Times before the last Admit count as the last Admit.
func (b *Bucket) Admit(now time.Time) bool {
	if !(b.rate > 0) {
		return true
	}
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if b.last.IsZero() || now.After(b.last) {
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}
