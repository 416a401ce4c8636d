package backoff

import (
	"math"
	"time"
)

// Constants of the bucket's smoothing guard.
const (
	smoothWindow   = 100 * time.Millisecond
	maxSmoothSlots = 1024
)

// bucket is the Gate's token bucket at the pacer's pace, with its 100 ms
// smoothing guard. Like the pacer it has no lock and no clock: the Gate
// calls it under its lock, with now and the current pace.
type bucket struct {
	// depth is GateConfig.Burst: > 0 a fixed depth (and no smoothing
	// guard), < 0 a depth of 1, 0 max(1, pace/50) with the guard.
	depth  int
	tokens float64
	last   time.Time
	// the last admissions, for the 100 ms smoothing guard (see slots): a
	// ring of maxSmoothSlots times since born, allocated on first use
	recent     []time.Duration
	recentNext int // where the next admission goes
	recentN    int // admissions in the ring
	born       time.Time
}

// burst is the bucket's depth at pace.
func (b *bucket) burst(pace float64) float64 {
	switch {
	case b.depth > 0:
		return float64(b.depth)
	case b.depth < 0 || math.IsInf(pace, 1):
		return 1
	}
	return math.Max(1, math.Floor(pace/50))
}

// clamp drops the tokens above the depth at pace: after the pace was cut,
// the tokens saved at the old pace must not burst at the new one.
func (b *bucket) clamp(pace float64) { b.tokens = math.Min(b.tokens, b.burst(pace)) }

// refill adds the tokens earned at pace since the last refill.
func (b *bucket) refill(now time.Time, pace float64) {
	if b.last.IsZero() || now.Before(b.last) {
		b.last = now
		return
	}
	if !math.IsInf(pace, 1) {
		b.tokens = math.Min(b.tokens+now.Sub(b.last).Seconds()*pace, b.burst(pace))
	}
	b.last = now
}

// resume refills at the end of a pause, without the tokens saved up while
// paused: the server just said it was full.
func (b *bucket) resume(now time.Time, pace float64) {
	b.refill(now, pace)
	b.tokens = math.Min(b.tokens, 1)
}

// giveBack returns the token of an admission that was not used.
func (b *bucket) giveBack(pace float64) {
	b.tokens = math.Min(b.tokens+1, b.burst(pace))
}

// ready reports whether a token is available, and if not, when one will be.
func (b *bucket) ready(now time.Time, pace float64) (time.Time, bool) {
	if b.tokens >= 1 {
		return time.Time{}, true
	}
	wait := time.Duration(math.Min((1-b.tokens)/pace, MaxDelay.Seconds()) * float64(time.Second))
	return now.Add(max(wait, time.Microsecond)), false
}

// take spends a token for an admission at now.
func (b *bucket) take(now time.Time, pace float64) {
	b.tokens--
	b.note(now, pace)
}

// slots is the most admissions the gate lets through in any 100 ms:
// pace × 100 ms. The token bucket alone lets a late timer catch up with a
// burst, and a burst on top of a pace just under a server's limit overruns
// a limit counted per 100 ms window (as Kamailio's are): the 503 then pauses
// everyone. Zero: no guard (a configured Burst, a pace under 10/s or over
// 10,240/s).
func (b *bucket) slots(pace float64) int {
	if b.depth != 0 || math.IsInf(pace, 1) {
		return 0
	}
	k := math.Floor(pace * smoothWindow.Seconds())
	if k < 1 || k > maxSmoothSlots {
		return 0
	}
	return int(k)
}

// smoothed reports whether an admission at now keeps the last 100 ms within
// slots, and if not, when it will.
func (b *bucket) smoothed(now time.Time, pace float64) (time.Time, bool) {
	k := b.slots(pace)
	if k == 0 || b.recentN < k {
		return time.Time{}, true
	}
	// The k-th most recent admission.
	kth := b.born.Add(b.recent[(b.recentNext-k+maxSmoothSlots)%maxSmoothSlots])
	if free := kth.Add(smoothWindow); now.Before(free) {
		return free, false
	}
	return time.Time{}, true
}

func (b *bucket) note(now time.Time, pace float64) {
	if b.recent == nil {
		if b.slots(pace) == 0 {
			return // never needed yet: no ring
		}
		b.born = now
		b.recent = make([]time.Duration, maxSmoothSlots)
	}
	b.recent[b.recentNext] = now.Sub(b.born)
	b.recentNext = (b.recentNext + 1) % maxSmoothSlots
	b.recentN = min(b.recentN+1, maxSmoothSlots)
}
