package backoff

import (
	"container/list"
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/statebox"
)

// Gate admits recovery attempts towards one destination. Every connection or
// trunk of the process that recovers towards that destination shares it, so
// that thousands of clients recovering at once reach the server at the pace
// it can serve instead of all at once. One Gate guards one destination: a
// backup address gets a Gate of its own.
//
// Acquire blocks in FIFO order until the attempt may go; the caller makes the
// attempt and reports its Outcome through Permit.Done. The gate bounds:
//   - the rate of admissions (a token bucket with a small burst),
//   - the attempts in flight (MaxInFlight),
//   - and it stops admitting while the destination pushes back (PushBack, or
//     an Overload outcome with a Retry-After).
//
// Without a configured Rate the gate learns one, the way BBR measures a
// path's delivery rate: it starts at InitialRate and doubles while nothing is
// rejected; when the destination starts rejecting, it measures the rate the
// destination actually accepts (the pace times the accepted fraction of the
// outcomes since the first rejection) and paces just below it; every second
// without rejections, while the pace is in use (the attempts accepted in that
// second reach half the pace: see below), it probes upward. This follows a
// server that rejects at once (an instant 503), which an in-flight limit
// alone cannot, and avoids AIMD's saw-tooth between C/2 and C. A rejection
// that carries a Retry-After pauses everyone (PushBack), so nothing can be
// measured while the server rejects. At startup's first such rejection the
// gate counts the attempts the server accepted in its counting window
// (100 ms, or the startup period, aligned on the clock, as Kamailio's
// counters and most fixed-window limiters are): if that count lies between
// the last clean pace and the pace that overshot, it paces at 95 % of it with
// the count as its ceiling, and forgives one lone Retry-After there in 10 s
// (timing jitter); otherwise it halves. After that it remembers the pace that
// drew a Retry-After as a ceiling for 10 s, steps down once per overshoot (to
// the last clean pace after a probe, by 10 % from a proven pace, by 40 % from
// an unproven one; the rejections of attempts already in flight do not cut
// again; a pace is proven when it ran clean for a second while in use: the
// attempts accepted over that second, in a fleet this member's times the
// members, reach half the pace, so a pace that drew no rejection only because
// little was asked of it, a few refreshes or attempts lost on a dead path,
// neither grows nor is trusted), and probes back up every second a quarter of
// the way to the ceiling (at least 5 %, at most half-way), only while the
// faster pace over the work still queued outweighs the risk of another pause;
// while its probes draw Retry-Afters it probes half as often, down to every
// 16 s; once the ceiling is forgotten, a probe against such a server steps
// 5 % and is taken for an even bet, made only with the work queued to win it
// back. A pace within 10 % under a recent ceiling that ran clean and in use
// for a second forgives one lone Retry-After in 10 s (timing jitter), as a
// configured Rate does; with a Fleet at once, and at 95 % of the fleet's
// estimate too, and a second within 10 s cuts by 10 % (the jitter of many
// processes on their places). A fleet's startup grows gently near the
// capacity (see the package doc). With a configured Rate, a lone Retry-After
// at a pace within 10 % of the ceiling pauses without a cut (timing jitter at
// a server limited to exactly Rate); a second within 10 s cuts. Outcomes of
// attempts admitted before the gate last reopened do not steer the pace.
//
// When attempts come back Unreachable and nothing has succeeded since they
// were admitted, the gate closes: callers queue, and one scout attempt at a
// time goes through, on a short jittered backoff capped at ScoutMax. The first
// answer reopens the gate, which then admits the queue at its pace. Clients
// therefore need no long private backoff for destination-wide failures; their
// own policy is for failures that are theirs alone (ClientFailure).
//
// A Gate is safe for concurrent use. It owns no goroutine: when idle it costs
// one stopped timer. Close releases it.
type Gate struct {
	cfg  GateConfig
	inst *gateInstruments
	box  statebox.Box[GateState] // mirrors state, for WaitForStateChange

	mu       sync.Mutex
	queue    list.List // of *waiter
	prio     list.List // of *waiter, admitted before queue
	state    GateState
	closed   bool
	inFlight int
	timer    *time.Timer
	timerAt  time.Time

	pacer  pacer
	bucket bucket
	fleet  fleetLink

	pausedUntil time.Time

	// closed state
	scoutsOut   int       // scouts in flight
	scoutAt     time.Time // when the last scout was admitted
	scoutFails  int       // scouts sent since the gate closed
	nextScout   time.Time
	lastSuccess time.Time

	stats GateStats
}

type waiter struct {
	ch     chan *Permit // nil when the gate closed
	permit *Permit
}

// Permit is one admitted attempt. Call Done once with the attempt's outcome,
// or Abandon if the attempt was given up before it learned anything; later
// calls are ignored. A Permit that is neither done nor abandoned holds one of
// the gate's in-flight slots for ever.
type Permit struct {
	g       *Gate
	stamp   stamp  // the pacer's view when admitted
	succSeq uint64 // the gate's success count when admitted
	scout   bool
	done    bool // guarded by g.mu
}

// NewGate returns a Gate with the given configuration; out-of-range values are
// clamped as documented on GateConfig.
func NewGate(cfg GateConfig) *Gate {
	cfg = cfg.resolve()
	g := &Gate{cfg: cfg}
	g.queue.Init()
	g.prio.Init()
	g.pacer = newPacer(cfg.Rate, cfg.InitialRate, cfg.MinRate, time.Now())
	g.bucket = bucket{depth: cfg.Burst}
	g.bucket.tokens = g.bucket.burst(g.pacer.pace)
	g.inst = newGateInstruments(g)
	if cfg.Fleet != nil {
		g.fleet.m = cfg.Fleet.Join(cfg.Destination)
	}
	return g
}

// Acquire waits in FIFO order until an attempt may be made, and returns its
// Permit. It returns ctx's cause if ctx ends first; a caller that gives up
// leaves nothing behind (no queue entry, no slot). After Close it returns
// ErrClosed.
func (g *Gate) Acquire(ctx context.Context) (*Permit, error) {
	if g == nil {
		return nil, errNilGate
	}
	return g.acquire(ctx, &g.queue)
}

// AcquirePriority is Acquire for an attempt that keeps something alive
// rather than recovering it — a SIP trunk's refresh of a binding it holds:
// it waits ahead of every ordinary Acquire (FIFO among priority callers), so
// that a recovering herd does not make the survivors' bindings lapse. It is
// paced, bounded and paused like any attempt.
func (g *Gate) AcquirePriority(ctx context.Context) (*Permit, error) {
	if g == nil {
		return nil, errNilGate
	}
	return g.acquire(ctx, &g.prio)
}

func (g *Gate) acquire(ctx context.Context, q *list.List) (*Permit, error) {
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, ErrClosed
	}
	w := &waiter{ch: make(chan *Permit, 1)}
	el := q.PushBack(w)
	ev := g.dispatchLocked(start)
	if w.permit != nil {
		g.mu.Unlock()
		g.emit(ev)
		g.inst.waited(ctx, 0)
		return w.permit, nil
	}
	g.mu.Unlock()
	g.emit(ev)

	select {
	case p := <-w.ch:
		if p == nil {
			return nil, ErrClosed
		}
		g.inst.waited(ctx, time.Since(start))
		return p, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if p := w.permit; p != nil {
		// Granted while we were giving up: hand the slot back.
		p.releaseLocked()
		g.stats.Admitted--
		if !g.pacer.unlimited() {
			g.bucket.giveBack(g.pacer.pace)
		}
	} else {
		q.Remove(el) // a no-op if Close removed it
	}
	g.stats.Shed++
	ev = g.dispatchLocked(time.Now())
	g.mu.Unlock()
	g.emit(ev)
	g.inst.shed(ctx)
	return nil, context.Cause(ctx)
}

// Close releases the gate: it stops its timer, unregisters its metric
// callback (its instruments stop reporting), and makes every Acquire —
// queued now or called later — return ErrClosed. Permits already granted
// may still report their outcomes; they no longer admit anyone. Close does
// not change State. With a Fleet it waits for the calls to the fleet in
// flight (each bounded by FleetCallBound) and leaves the fleet, whose error
// it returns; otherwise it returns nil. It is idempotent.
func (g *Gate) Close() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil
	}
	g.closed = true
	if g.timer != nil {
		g.timer.Stop()
	}
	g.timerAt = time.Time{}
	for _, q := range []*list.List{&g.prio, &g.queue} {
		for q.Len() > 0 {
			w := q.Remove(q.Front()).(*waiter)
			w.ch <- nil
		}
	}
	g.mu.Unlock()
	g.inst.close()
	g.fleet.wg.Wait()
	if g.fleet.m != nil {
		return g.fleet.m.Leave()
	}
	return nil
}

// PushBack pauses all admissions for d (clamped to MaxPushBack), as a server's
// 503 with Retry-After asks: RFC 3261 §21.5.4 says to send nothing to that
// server for that long; with a GateConfig.Fleet the pause is the fleet's and
// the fleet's slots spread the resumption. Without one (or while the fleet's
// store is unreachable) the gate's first admission after the pause goes at a
// random point of its first pace interval (1/pace) after the pause's end,
// never before it: independent processes told the same Retry-After do not
// come back at the same instant, and a lone gate loses at most one interval.
// Overlapping pauses end at the latest end. Attempts in flight are not
// affected. d ≤ 0 is ignored.
func (g *Gate) PushBack(d time.Duration) {
	if g == nil || d <= 0 {
		return
	}
	now := time.Now()
	g.mu.Lock()
	ev := g.pushBackLocked(now, d)
	g.fleetPushBackLocked(now, d)
	ev = append(ev, g.dispatchLocked(now)...)
	g.mu.Unlock()
	g.emit(ev)
}

func (g *Gate) pushBackLocked(now time.Time, d time.Duration) []GateStateChange {
	d = min(d, g.cfg.MaxPushBack)
	until := now.Add(d)
	if !until.After(g.pausedUntil) {
		return nil
	}
	g.pausedUntil = until
	g.pacer.paused()
	if !g.closed {
		g.armLocked(until) // the pause ends on time, queue or no queue
	}
	return g.setStateLocked(now, GatePaused, until)
}

// Stats returns a snapshot of the gate's state and counters.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.State = g.state
	s.InFlight = g.inFlight
	s.Queued = g.queued()
	s.Rate = g.pacer.pace
	s.Estimate = g.pacer.estimate
	if g.state == GatePaused {
		s.PausedUntil = g.pausedUntil
	}
	return s
}

// State returns the gate's current state.
func (g *Gate) State() GateState { return g.box.Get() }

// WaitForStateChange blocks until the gate's state differs from from, and
// reports true, or until ctx ends, and reports false. It returns at once if
// the state already differs. A pause that is extended is no change.
func (g *Gate) WaitForStateChange(ctx context.Context, from GateState) bool {
	return g.box.Wait(ctx, from)
}

// rejectedLocked feeds a rejection to the pacer, and pauses for its
// Retry-After.
func (g *Gate) rejectedLocked(now time.Time, retryAfter time.Duration, s stamp) []GateStateChange {
	g.pacer.rejected(now, retryAfter, s)
	g.bucket.clamp(g.pacer.pace)
	if retryAfter > 0 {
		g.fleetPushBackLocked(now, retryAfter)
		return g.pushBackLocked(now, retryAfter)
	}
	return nil
}

// reachableLocked handles proof that the destination answers.
func (g *Gate) reachableLocked(now time.Time) []GateStateChange {
	if g.state != GateClosed {
		return nil
	}
	g.scoutFails = 0
	g.pacer.reopen(now)
	g.bucket.clamp(g.pacer.pace)
	if g.fleet.m != nil {
		g.fleet.reopened = true
		g.fleetScoutEndLocked(true)
	}
	return g.setStateLocked(now, GateOpen, time.Time{})
}

func (g *Gate) unreachableLocked(now time.Time) []GateStateChange {
	if g.state == GateClosed {
		return nil // the next scout is already scheduled
	}
	g.scoutFails = 0
	g.nextScout = now.Add(g.scoutDelay())
	g.fleet.closedAt = g.fleet.opened
	g.fleet.drop()
	return g.setStateLocked(now, GateClosed, time.Time{})
}

// scoutDelay draws the wait before the next scout: uniform in [d/2, d],
// d = min(ScoutMax, ScoutBase·2^scoutFails).
func (g *Gate) scoutDelay() time.Duration {
	d := float64(capped(g.cfg.ScoutBase, g.cfg.ScoutMax, 2, g.scoutFails))
	return time.Duration(d/2 + uniform(g.cfg.rand)*d/2)
}

// dispatchLocked admits queued waiters while the limits allow and arms the
// timer for the next moment one may be admitted.
func (g *Gate) dispatchLocked(now time.Time) []GateStateChange {
	if g.closed {
		return nil
	}
	var ev []GateStateChange
	if g.state == GatePaused && !now.Before(g.pausedUntil) {
		g.bucket.resume(now, g.pacer.pace)
		g.spreadResumeLocked(now)
		g.pausedUntil = time.Time{}
		g.pacer.resumed(now)
		ev = g.setStateLocked(now, GateOpen, time.Time{})
	}
	if g.state == GateOpen {
		g.pacer.fleetGrows = g.fleet.connected()
		g.pacer.fleetHeld = g.fleet.m != nil && !g.pacer.fleetGrows
		g.pacer.members = g.fleetMembers()
		g.pacer.control(now, g.queued()*g.pacer.members)
	}
	g.bucket.refill(now, g.localPace())
	for g.queued() > 0 {
		var at time.Time
		var ok bool
		switch g.state {
		case GatePaused:
			at = g.pausedUntil
		case GateClosed:
			at, ok = g.closedLocked(now)
		default:
			if g.cfg.MaxInFlight > 0 && g.inFlight >= g.cfg.MaxInFlight {
				return ev
			}
			at, ok = g.openLocked(now)
		}
		if !ok {
			if !at.IsZero() { // zero: a call to the fleet dispatches again
				g.armLocked(at)
			}
			return ev
		}
		g.admitLocked(now)
	}
	return ev
}

// spreadResumeLocked, at now at the end of a pause, moves the gate's first
// admission to a random point of its first pace interval after the pause:
// never before the pause's end, at most one interval (1/pace) after it. Gates
// of independent processes paused by the same Retry-After (a registrar
// answering their attempts in the same second) would otherwise all come back
// at the same instant, and pace on from there in step; a lone gate loses at
// most one interval per pause. A gate that admits through its fleet needs
// none: the fleet's queue spaces the members.
func (g *Gate) spreadResumeLocked(now time.Time) {
	pace := g.localPace()
	if g.fleet.on(now) || g.pacer.unlimited() || !(pace > 0) {
		return
	}
	earned := now.Sub(g.pausedUntil).Seconds() * pace // the timer may fire late
	g.bucket.tokens = math.Min(g.bucket.tokens, 1-uniform(g.cfg.rand)+earned)
}

// scoutLocked reports whether a scout may go at now, and takes its turn;
// if not, it returns when one may.
func (g *Gate) scoutLocked(now time.Time) (time.Time, bool) {
	// One scout at a time; but a scout lost in a black hole (no answer, no
	// error: its caller waits for a timeout) must not hide the path's
	// return, so after ScoutMax another may go. Scouts too respect a
	// push-back that is still running (the gate closed during a pause:
	// attempts admitted before it came back unreachable).
	at := laterOf(g.nextScout, g.pausedUntil)
	if g.scoutsOut > 0 {
		at = laterOf(at, g.scoutAt.Add(g.cfg.ScoutMax))
	}
	if now.Before(at) {
		return at, false
	}
	g.scoutFails++
	g.scoutAt = now
	g.nextScout = now.Add(g.scoutDelay())
	return time.Time{}, true
}

// paceLocked reports whether the pace lets an attempt go at now, and takes
// its token; if not, it returns when to look again.
func (g *Gate) paceLocked(now time.Time) (time.Time, bool) {
	pace := g.localPace()
	if g.pacer.unlimited() {
		return time.Time{}, true
	}
	if at, ok := g.bucket.ready(now, pace); !ok {
		if c := g.pacer.next(); c.After(now) && c.Before(at) {
			at = c // the pace may change before then
		}
		return at, false
	}
	if at, ok := g.bucket.smoothed(now, pace); !ok {
		return at, false
	}
	g.bucket.take(now, pace)
	return time.Time{}, true
}

func (g *Gate) queued() int { return g.queue.Len() + g.prio.Len() }

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (g *Gate) admitLocked(now time.Time) {
	q := &g.prio
	if q.Len() == 0 {
		q = &g.queue
	}
	w := q.Remove(q.Front()).(*waiter)
	scout := g.state == GateClosed
	p := &Permit{g: g, stamp: g.pacer.stamp(now), succSeq: g.stats.Succeeded, scout: scout}
	if scout {
		g.scoutsOut++
	}
	g.inFlight++
	g.stats.Admitted++
	w.permit = p
	w.ch <- p
}

func (g *Gate) armLocked(at time.Time) {
	if !g.timerAt.IsZero() && !at.Before(g.timerAt) {
		return
	}
	g.timerAt = at
	d := time.Until(at)
	if g.timer == nil {
		g.timer = time.AfterFunc(d, g.fire)
		return
	}
	g.timer.Reset(d)
}

func (g *Gate) fire() {
	g.mu.Lock()
	g.timerAt = time.Time{}
	ev := g.dispatchLocked(time.Now())
	g.mu.Unlock()
	g.emit(ev)
}

func (g *Gate) setStateLocked(now time.Time, to GateState, until time.Time) []GateStateChange {
	if g.state == to && to != GatePaused {
		return nil
	}
	from := g.state
	g.state = to
	g.box.Set(to, nil)
	return []GateStateChange{{Destination: g.cfg.Destination, From: from, To: to, At: now, Until: until}}
}

// emit logs and reports state changes, outside the gate's lock. It logs
// with context.Background: most changes come from an outcome, a push-back or
// the timer, which have no caller's ctx, and the one Acquire causes belongs
// to the gate, not to that caller.
//
//nolint:contextcheck // see above
func (g *Gate) emit(ev []GateStateChange) {
	for _, e := range ev {
		if g.cfg.Logger != nil {
			g.cfg.Logger.LogAttrs(context.Background(), slog.LevelInfo, "gate state",
				slog.String("server.address", e.Destination),
				slog.String("from", e.From.String()), slog.String("to", e.To.String()))
		}
		if g.cfg.OnStateChange != nil {
			g.cfg.OnStateChange(e)
		}
	}
}
