// Package ratelimit holds the server models that the test registrar, the
// herd benchmark and the gate's tests share: Window, a fixed-window counter
// that limits the way Kamailio's htable counters do, and Bucket, a token
// bucket. It is not API.
package ratelimit

import (
	"math"
	"time"
)

// Window admits at most round(capacity × W) requests (at least one) in each
// window of length W aligned on the clock. The zero value, a W ≤ 0 or a
// capacity ≤ 0 admits everything. A Window is not safe for concurrent use:
// its callers hold their own lock.
type Window struct {
	w     time.Duration
	max   int // per window; < 0: unlimited
	start time.Time
	n     int
}

// NewWindow returns a Window of length w admitting capacity per second.
func NewWindow(w time.Duration, capacity float64) *Window {
	c := &Window{w: w}
	c.SetCapacity(capacity)
	return c
}

// SetCapacity changes the capacity (requests per second); ≤ 0 is unlimited.
func (c *Window) SetCapacity(capacity float64) {
	c.max = -1
	if capacity > 0 && c.w > 0 {
		c.max = max(1, int(math.Round(capacity*c.w.Seconds())))
	}
}

// Admit reports whether one more request fits in now's window, and counts it
// if so.
func (c *Window) Admit(now time.Time) bool {
	if c.w <= 0 || c.max < 0 {
		return true
	}
	if start := now.Truncate(c.w); !start.Equal(c.start) {
		c.start, c.n = start, 0
	}
	if c.n >= c.max {
		return false
	}
	c.n++
	return true
}
