package sip

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ctxtime"
)

// maxUnregisterBounds caps a stop's unregistration at this many
// UnregisterTimeouts in all, however long the registrar keeps serving the
// herd ahead of it (1 min by default).
const maxUnregisterBounds = 12

// errUnregisterStalled ends an unregistration that saw no progress at the
// registrar for UnregisterTimeout, or reached its cap.
var errUnregisterStalled = errors.New("sip: unregistration stalled")

// unregisterFrom removes the binding at tg (Expires: 0); a negative
// UnregisterTimeout: not at all. It goes through the registrar's gate like
// every REGISTER: a Fleet that stops unregisters all its trunks at once, and
// a registrar that limits its rate would answer the excess 503 and keep
// those bindings until they expire. The wait is bounded by progress, not by
// a fixed deadline (see unregWatch): the herd of a stopping Fleet takes
// about N ÷ the registrar's rate, and a silent registrar UnregisterTimeout.
// A 503 is retried after its Retry-After when the pause fits the bound;
// a longer one gives up at once (the binding then expires by itself).
func (r *runner) unregisterFrom(ctx context.Context, tg *regTarget) {
	t := r.t
	bound := t.cfg.UnregisterTimeout
	if bound < 0 {
		return
	}
	uctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	w := watchUnregister(tg.gate, bound, tg.held, func() { cancel(errUnregisterStalled) })
	defer w.stop()
	var res result
	for {
		res = r.exchange(uctx, tg, 0, false)
		if res.act != pushedBack || uctx.Err() != nil {
			break
		}
		if ra := res.retryAfter; ra > bound || !w.fits(ra) {
			// The registrar asks for a pause the bound cannot hold:
			// waiting it out would end in vain.
			t.log.LogAttrs(ctx, slog.LevelWarn, "sip unregister given up: Retry-After beyond its bound",
				slog.String("registrar", tg.raw), slog.Duration("retry_after", ra),
				slog.Duration("bound", bound), slog.Time("binding_until", tg.held))
			return
		}
		if res.retryAfter == 0 && !r.unregisterBackOff(uctx) {
			res = result{act: stopped, err: context.Cause(uctx)}
			break
		}
	}
	if res.act != registered && t.log.Enabled(ctx, slog.LevelInfo) {
		t.log.LogAttrs(ctx, slog.LevelInfo, "sip unregister failed: the binding stays until it expires",
			slog.String("registrar", tg.raw), slog.Any("error", res.err), slog.Time("binding_until", tg.held))
	}
}

// unregisterBackOff waits after a 503 without Retry-After, which paused
// nobody: the trunk's own backoff, as for a REGISTER, within the bound;
// false when the bound ended first or the policy says never again.
func (r *runner) unregisterBackOff(ctx context.Context) bool {
	d := r.nextBackOff()
	return d >= 0 && ctxtime.Sleep(ctx, d)
}

// unregWatch bounds an unregistration by progress: it ends it (stalled)
// when UnregisterTimeout passes without the registrar's gate recording a
// success (a trunk of the herd unregistered, or anything else the
// registrar served) and without a pause the registrar asked for ending
// within the bound. So the herd of a stopping Fleet drains at the pace the
// registrar serves, however large, while a registrar that stopped
// answering costs one bound. A hard cap (maxUnregisterBounds bounds, or the
// binding's end: past it there is nothing to remove) keeps Run's exit
// bounded. It is a timer, no goroutine.
type unregWatch struct {
	gate  *backoff.Gate
	bound time.Duration
	cap   time.Time
	end   func()

	mu    sync.Mutex
	seen  uint64 // the gate's successes at the last look
	timer *time.Timer
	done  bool
}

func watchUnregister(gate *backoff.Gate, bound time.Duration, held time.Time, end func()) *unregWatch {
	now := time.Now()
	w := &unregWatch{gate: gate, bound: bound, end: end, cap: now.Add(maxUnregisterBounds * bound)}
	if !held.IsZero() && held.Before(w.cap) {
		w.cap = held
	}
	if gate != nil {
		w.seen = gate.Stats().Succeeded
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(min(bound, w.cap.Sub(now)), w.look)
	w.mu.Unlock()
	return w
}

// look runs when the bound has passed since the last progress: it extends
// the watch if the registrar served someone meanwhile, or is pausing for a
// Retry-After that ends within the bound; otherwise it ends the
// unregistration.
func (w *unregWatch) look() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return
	}
	now := time.Now()
	next := w.progress(now)
	if next.IsZero() || !now.Before(w.cap) {
		w.done = true
		w.end()
		return
	}
	if next.After(w.cap) {
		next = w.cap
	}
	w.timer.Reset(next.Sub(now))
}

// progress returns when to look again, or zero for no progress.
func (w *unregWatch) progress(now time.Time) time.Time {
	if w.gate == nil {
		return time.Time{}
	}
	st := w.gate.Stats()
	switch {
	case st.Succeeded > w.seen:
		w.seen = st.Succeeded
		return now.Add(w.bound)
	case st.State == backoff.GatePaused && !st.PausedUntil.After(now.Add(w.bound)):
		return st.PausedUntil.Add(w.bound)
	}
	return time.Time{}
}

// fits reports whether a pause of d from now ends before the watch's cap.
func (w *unregWatch) fits(d time.Duration) bool {
	return time.Now().Add(d).Before(w.cap)
}

func (w *unregWatch) stop() {
	w.mu.Lock()
	w.done = true
	w.timer.Stop()
	w.mu.Unlock()
}
