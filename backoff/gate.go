package backoff

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// GateState is the admission state of a Gate.
type GateState int

const (
	// GateOpen admits attempts at the gate's pace.
	GateOpen GateState = iota
	// GateClosed means the destination looks unreachable: attempts queue and
	// one scout at a time goes through on a short jittered backoff; the first
	// answer from the destination reopens the gate.
	GateClosed
	// GatePaused means the destination pushed back (a Retry-After): nothing
	// is admitted until the pause ends.
	GatePaused
)

// String returns the state's name.
func (s GateState) String() string {
	switch s {
	case GateOpen:
		return "open"
	case GateClosed:
		return "closed"
	case GatePaused:
		return "paused"
	}
	return "GateState(" + strconv.Itoa(int(s)) + ")"
}

type outcomeKind uint8

const (
	kindSuccess outcomeKind = iota
	kindClientFailure
	kindUnreachable
	kindOverload
)

// Outcome is what an admitted attempt reports to its Gate through
// Permit.Done: Success, ClientFailure, Unreachable, or Overload(retryAfter).
type Outcome struct {
	kind       outcomeKind
	retryAfter time.Duration
	since      time.Time // UnreachableSince
}

var (
	// Success: the destination served the attempt.
	Success = Outcome{kind: kindSuccess}
	// ClientFailure: the destination answered, but the failure is this
	// client's alone (bad credentials, a forbidden identity). It proves the
	// destination reachable and does not slow anyone else down; the client
	// backs off on its own policy.
	ClientFailure = Outcome{kind: kindClientFailure}
	// Unreachable: the attempt timed out, was refused or reset. When no
	// attempt has succeeded since this one was admitted, the gate closes and
	// scouts; otherwise the destination is alive but struggling, and the
	// outcome counts as overload.
	Unreachable = Outcome{kind: kindUnreachable}
)

// UnreachableSince is Unreachable for Gate.Observe, from a path that has
// been silent since t (a flow's last inbound byte): it closes the gate unless
// an attempt succeeded more than a second after t, which proves the destination reachable (the
// dead path was a straggler, such as a connection opened into an outage and
// found dead after the path came back).
func UnreachableSince(t time.Time) Outcome { return Outcome{kind: kindUnreachable, since: t} }

// Overload reports that the destination rejected the attempt because it is
// overloaded (a SIP or HTTP 503). A positive retryAfter (the server's
// Retry-After) pauses the whole gate for that long, as PushBack does.
func Overload(retryAfter time.Duration) Outcome {
	return Outcome{kind: kindOverload, retryAfter: max(retryAfter, 0)}
}

// RetryAfter returns the Retry-After carried by an Overload outcome, or zero.
func (o Outcome) RetryAfter() time.Duration { return o.retryAfter }

// String names the outcome.
func (o Outcome) String() string {
	switch o.kind {
	case kindSuccess:
		return "success"
	case kindClientFailure:
		return "client-failure"
	case kindUnreachable:
		return "unreachable"
	}
	if o.retryAfter > 0 {
		return "overload(retry-after " + o.retryAfter.String() + ")"
	}
	return "overload"
}

// Defaults of GateConfig.
const (
	DefaultMaxInFlight    = 128
	DefaultInitialRate    = 20.0
	DefaultMinRate        = 1.0
	DefaultScoutBase      = 100 * time.Millisecond
	DefaultScoutMax       = 2 * time.Second
	DefaultMaxPushBack    = time.Hour
	defaultStartupPeriod  = 100 * time.Millisecond
	defaultProbePeriod    = time.Second
	cruiseGain            = 0.95
	hiMemory              = 10 * time.Second
	minEpisodeOutcomes    = 16
	minEpisodeDuration    = 50 * time.Millisecond
	maxConfigurableRate   = 1e6
	minConfigurableRate   = 1e-3
	maxConfigurableFlight = 1 << 20
	smoothWindow          = 100 * time.Millisecond
	maxSmoothSlots        = 1024
)

// GateConfig configures a Gate. The zero value is a gate that learns the
// destination's capacity from outcomes, with the defaults documented on each
// field.
type GateConfig struct {
	// Destination names the server the gate guards (host:port or a URI). It
	// becomes the server.address attribute of the gate's metrics and logs.
	Destination string
	// Rate is the most attempts per second the gate admits; it paces at 95 %
	// of it, so that timing jitter does not overrun a server limited to
	// exactly Rate. Zero means
	// adaptive: the gate learns the rate the destination accepts (see Gate).
	// Positive: a ceiling the gate never exceeds, and its starting pace; it
	// still slows down when the destination rejects. Negative: no rate limit
	// (only MaxInFlight, push-back and closing apply). At most 10^6.
	Rate float64
	// Burst is the token bucket's depth. Zero or negative means
	// max(1, pace/50): a small burst, so admissions are paced, not bunched;
	// and then no 100 ms holds more than pace × 100 ms admissions, so that
	// a late timer's catch-up does not overrun a server that counts its
	// limit per 100 ms window.
	Burst int
	// MaxInFlight bounds the attempts admitted whose Permit.Done has not
	// been called. Zero means DefaultMaxInFlight (128); negative means no
	// bound.
	MaxInFlight int
	// InitialRate is an adaptive gate's starting pace, in attempts per
	// second, before it has measured the destination. Zero or negative
	// means DefaultInitialRate (20/s). The pace doubles every 100 ms (or
	// every round trip, if longer) while attempts queue and none is
	// rejected.
	InitialRate float64
	// MinRate is the floor of an adaptive gate's pace. Zero or negative
	// means DefaultMinRate (1/s).
	MinRate float64
	// ScoutBase and ScoutMax bound the jittered delay between scouts while
	// the gate is closed: the n-th failed scout waits a random time in
	// [d/2, d], d = min(ScoutMax, ScoutBase·2^n). Zero or negative means
	// 100 ms and 2 s. One scout at a time is negligible load, so the cap is
	// short: the gate notices a restored path within about ScoutMax.
	ScoutBase, ScoutMax time.Duration
	// MaxPushBack clamps a pause requested by PushBack or an Overload
	// outcome. Zero or negative means DefaultMaxPushBack (1 h): a server's
	// absurd Retry-After does not park the gate for ever.
	MaxPushBack time.Duration
	// MeterProvider provides the gate's instruments; nil means the global
	// provider (a no-op unless the application set one).
	MeterProvider metric.MeterProvider
	// Logger receives state changes at Info; nil discards.
	Logger *slog.Logger
	// OnStateChange, if set, is called after each state change, outside the
	// gate's lock. It must not block.
	OnStateChange func(GateStateChange)
	// Rand is the source of randomness for scout jitter; nil means a
	// process-wide source. A Rand given here is used under the gate's lock.
	Rand *rand.Rand
}

// GateStateChange describes a change of a Gate's state.
type GateStateChange struct {
	Destination string
	From, To    GateState
	// Until is the end of a pause (To == GatePaused), else zero.
	Until time.Time
}

// GateStats is a snapshot of a Gate for metrics and tests.
type GateStats struct {
	State    GateState
	InFlight int
	Queued   int
	// Rate is the current pace in attempts per second; +Inf when unlimited.
	Rate float64
	// Estimate is the destination's capacity as measured while it rejected
	// attempts, in attempts per second; zero until measured.
	Estimate float64
	// PausedUntil is the end of the current push-back, or zero.
	PausedUntil time.Time
	// Admitted counts permits granted; Shed counts Acquire calls that gave
	// up (their ctx ended) before a permit was granted.
	Admitted, Shed uint64
	// Outcomes reported through Permit.Done.
	Succeeded, ClientFailures, Unreachable, Overloaded uint64
}

// Gate admits recovery attempts towards one destination. Every connection or
// trunk of the process that recovers towards that destination shares it, so
// that thousands of clients recovering at once reach the server at the pace
// it can serve instead of all at once.
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
// without rejections it probes upward. This follows a server that rejects at
// once (an instant 503), which an in-flight limit alone cannot, and avoids
// AIMD's saw-tooth between C/2 and C. A rejection that carries a Retry-After
// pauses everyone (PushBack), so nothing can be measured while the server
// rejects; against such a server the gate remembers the pace that drew it as
// a ceiling for 10 s, steps down once per overshoot (to the last clean pace
// after a probe, by 10 % from a proven pace, by 40 % from an unproven one; the
// rejections of attempts already in flight do not cut again), and probes back
// up every second a quarter of the way to the ceiling (at least 5 %, at most
// half-way), only while the faster pace over the work still queued outweighs
// the risk of another pause. Outcomes of attempts admitted before the gate
// last reopened do not steer the pace.
//
// When attempts come back Unreachable and nothing has succeeded since they
// were admitted, the gate closes: callers queue, and one scout attempt at a
// time goes through, on a short jittered backoff capped at ScoutMax. The first
// answer reopens the gate, which then admits the queue at its pace. Clients
// therefore need no long private backoff for destination-wide failures; their
// own policy is for failures that are theirs alone (ClientFailure).
//
// A Gate is safe for concurrent use. It owns no goroutine: when idle it costs
// one stopped timer.
type Gate struct {
	cfg  GateConfig
	inst *gateInstruments

	mu       sync.Mutex
	queue    list.List // of *waiter
	prio     list.List // of *waiter, admitted before queue
	state    GateState
	inFlight int
	timer    *time.Timer
	timerAt  time.Time

	// token bucket
	tokens float64
	last   time.Time
	// the last admissions, for the 100 ms smoothing guard (see smoothSlots):
	// a ring of maxSmoothSlots times since born, allocated on first use
	recent     []time.Duration
	recentNext int // where the next admission goes
	recentN    int // admissions in the ring
	born       time.Time

	pausedUntil time.Time

	// closed state
	scoutsOut  int       // scouts in flight
	scoutAt    time.Time // when the last scout was admitted
	scoutFails int       // scouts sent since the gate closed
	nextScout  time.Time

	// adaptive control
	pace        float64
	estimate    float64
	startup     bool
	growAt      time.Time // next startup doubling
	probeAt     time.Time // next cruise probe
	probeEvery  time.Duration
	probedAt    time.Time     // last cruise probe
	cleanProbe  int           // consecutive probes without rejection
	rejectedAt  time.Time     // last rejection
	minRTT      time.Duration // smallest round trip seen: the path, not the queue
	probeFrom   float64       // the pace before the last probe
	epoch       uint64        // counts reopenings: older permits do not steer the pace
	lastSuccess time.Time
	paceSetAt   time.Time // when the pace last changed
	hi          float64   // a pace that drew a Retry-After, recently
	hiAt        time.Time
	cuts        uint64        // pace cuts for a Retry-After: one per overshoot
	trustAt     time.Time     // a Retry-After forgiven at a configured Rate
	lastRA      time.Duration // the last Retry-After
	ep          episode

	stats GateStats
}

// episode is a measurement of the destination's acceptance while it rejects.
type episode struct {
	active    bool
	start     time.Time
	succ, rej int
	// paused: a push-back happened during the episode, so successes per
	// second of wall time say nothing about the destination.
	paused bool
	// offered sums, over the accepted outcomes, the pace at which each was
	// admitted: offered/(succ+rej) is the rate the destination accepted.
	offered float64
}

type waiter struct {
	ch     chan *Permit
	permit *Permit
	enq    time.Time
}

// Permit is one admitted attempt. Call Done once with the attempt's outcome,
// or Abandon if the attempt was given up before it learned anything; later
// calls are ignored. A Permit that is neither done nor abandoned holds one of
// the gate's in-flight slots for ever.
type Permit struct {
	g        *Gate
	admitted time.Time
	succSeq  uint64  // the gate's success count when admitted
	epoch    uint64  // the gate's open period when admitted
	pace     float64 // the gate's pace when admitted
	cuts     uint64  // the gate's cut count when admitted
	scout    bool
	done     bool // guarded by g.mu
}

// ErrNilGate is returned by Acquire on a nil *Gate.
var ErrNilGate = errors.New("backoff: nil gate")

// NewGate returns a Gate with the given configuration; out-of-range values are
// clamped as documented on GateConfig.
func NewGate(cfg GateConfig) *Gate {
	if math.IsNaN(cfg.Rate) {
		cfg.Rate = 0
	}
	cfg.Rate = math.Min(cfg.Rate, maxConfigurableRate)
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	cfg.MaxInFlight = min(cfg.MaxInFlight, maxConfigurableFlight)
	if !(cfg.InitialRate > 0) {
		cfg.InitialRate = DefaultInitialRate
	}
	cfg.InitialRate = math.Min(cfg.InitialRate, maxConfigurableRate)
	if !(cfg.MinRate > 0) {
		cfg.MinRate = DefaultMinRate
	}
	if cfg.Rate > 0 {
		cfg.Rate = math.Max(cfg.Rate, minConfigurableRate)
	}
	cfg.MinRate = math.Max(cfg.MinRate, minConfigurableRate)
	cfg.MinRate = math.Min(cfg.MinRate, cfg.InitialRate)
	if cfg.Rate > 0 {
		cfg.MinRate = math.Min(cfg.MinRate, cfg.Rate)
	}
	cfg.ScoutBase = clampDur(orDefault(cfg.ScoutBase, DefaultScoutBase), MinDelay, time.Minute)
	cfg.ScoutMax = clampDur(orDefault(cfg.ScoutMax, DefaultScoutMax), cfg.ScoutBase, time.Hour)
	cfg.MaxPushBack = clampDur(orDefault(cfg.MaxPushBack, DefaultMaxPushBack), MinDelay, MaxDelay)
	g := &Gate{cfg: cfg}
	g.queue.Init()
	g.prio.Init()
	g.resetPace(time.Now())
	g.tokens = g.burst()
	g.inst = newGateInstruments(g)
	return g
}

func (g *Gate) adaptive() bool { return g.cfg.Rate >= 0 }

func (g *Gate) ceiling() float64 {
	if g.cfg.Rate > 0 {
		// Paced at 95 % of the configured rate: probes stop there too.
		return cruiseGain * g.cfg.Rate
	}
	return maxConfigurableRate
}

// resetPace sets the pace for a fresh start (creation or reopening): the
// configured rate, the measured estimate, or startup from InitialRate.
func (g *Gate) resetPace(now time.Time) {
	g.ep = episode{}
	g.cleanProbe = 0
	switch {
	case g.cfg.Rate > 0:
		// Told the rate: start every open period just below it (timing
		// jitter would otherwise overrun a server limited to exactly
		// Rate), and adapt below that only on the evidence of this period.
		g.pace = cruiseGain * g.cfg.Rate
		g.startup = false
	case g.cfg.Rate < 0:
		g.pace = math.Inf(1)
		g.startup = false
	case g.estimate > 0:
		g.pace = cruiseGain * g.estimate
		g.startup = false
	default:
		g.pace = g.cfg.InitialRate
		g.startup = true
	}
	g.pace = math.Max(g.pace, g.cfg.MinRate)
	g.growAt = now.Add(g.startupPeriod())
	if g.probeEvery == 0 {
		g.probeEvery = defaultProbePeriod
	}
	g.probeAt = now.Add(g.probeEvery)
}

func (g *Gate) burst() float64 {
	if g.cfg.Burst > 0 {
		return float64(g.cfg.Burst)
	}
	if math.IsInf(g.pace, 1) {
		return 1
	}
	return math.Max(1, math.Floor(g.pace/50))
}

// startupPeriod is how often startup doubles the pace: every round trip
// (so that a rejection can come back before the next doubling), at least
// 100 ms and at most 1 s. The minimum round trip is the path's; a smoothed
// one would include the queueing of the last herd.
func (g *Gate) startupPeriod() time.Duration {
	return min(max(defaultStartupPeriod, g.minRTT), time.Second)
}

// Acquire waits in FIFO order until an attempt may be made, and returns its
// Permit. It returns ctx's cause if ctx ends first; a caller that gives up
// leaves nothing behind (no queue entry, no slot).
func (g *Gate) Acquire(ctx context.Context) (*Permit, error) {
	if g == nil {
		return nil, ErrNilGate
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
		return nil, ErrNilGate
	}
	return g.acquire(ctx, &g.prio)
}

func (g *Gate) acquire(ctx context.Context, q *list.List) (*Permit, error) {
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	g.mu.Lock()
	w := &waiter{ch: make(chan *Permit, 1), enq: start}
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
		g.inst.waited(ctx, time.Since(start))
		return p, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	if w.permit != nil {
		// Granted while we were giving up: hand the slot back.
		p := w.permit
		p.done = true
		g.inFlight--
		g.stats.Admitted--
		if p.scout {
			g.scoutsOut--
		}
		if !math.IsInf(g.pace, 1) {
			g.tokens = math.Min(g.tokens+1, g.burst())
		}
	} else {
		q.Remove(el)
	}
	g.stats.Shed++
	ev = g.dispatchLocked(time.Now())
	g.mu.Unlock()
	g.emit(ev)
	g.inst.shed(ctx)
	return nil, context.Cause(ctx)
}

// PushBack pauses all admissions for d (clamped to MaxPushBack), as a server's
// 503 with Retry-After asks: RFC 3261 §21.5.4 says to send nothing to that
// server for that long. Overlapping pauses end at the latest end. Attempts in
// flight are not affected. d ≤ 0 is ignored.
func (g *Gate) PushBack(d time.Duration) {
	if g == nil || d <= 0 {
		return
	}
	now := time.Now()
	g.mu.Lock()
	ev := g.pushBackLocked(now, d)
	ev2 := g.dispatchLocked(now)
	g.mu.Unlock()
	g.emit(ev)
	g.emit(ev2)
}

func (g *Gate) pushBackLocked(now time.Time, d time.Duration) []GateStateChange {
	d = min(d, g.cfg.MaxPushBack)
	until := now.Add(d)
	if !until.After(g.pausedUntil) {
		return nil
	}
	g.pausedUntil = until
	g.ep.paused = g.ep.active
	return g.setStateLocked(GatePaused, until)
}

// Stats returns a snapshot of the gate's state and counters.
func (g *Gate) Stats() GateStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.stats
	s.State = g.state
	s.InFlight = g.inFlight
	s.Queued = g.queued()
	s.Rate = g.pace
	s.Estimate = g.estimate
	if g.state == GatePaused {
		s.PausedUntil = g.pausedUntil
	}
	return s
}

// State returns the gate's current state.
func (g *Gate) State() GateState {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.state
}

// Done reports the attempt's outcome and frees its in-flight slot. Only the
// first call counts.
func (p *Permit) Done(o Outcome) {
	if p == nil || p.g == nil {
		return
	}
	g := p.g
	now := time.Now()
	g.mu.Lock()
	if p.done {
		g.mu.Unlock()
		return
	}
	p.done = true
	g.inFlight--
	if p.scout {
		g.scoutsOut--
	}
	var ev []GateStateChange
	switch o.kind {
	case kindSuccess:
		g.stats.Succeeded++
		g.lastSuccess = now
		if p.epoch == g.epoch {
			g.observeRTT(now.Sub(p.admitted))
			g.accepted(now, p.pace)
		}
		ev = g.reachableLocked(now)
	case kindClientFailure:
		g.stats.ClientFailures++
		ev = g.reachableLocked(now)
	case kindOverload:
		g.stats.Overloaded++
		ev = g.reachableLocked(now)
		if p.epoch == g.epoch {
			// Admitted before the gate last closed, at a pace that no
			// longer applies: such an outcome says nothing of today's.
			g.rejected(now, o.retryAfter, p.pace, p.cuts)
		}
		if o.retryAfter > 0 {
			ev = append(ev, g.pushBackLocked(now, o.retryAfter)...)
		}
	case kindUnreachable:
		g.stats.Unreachable++
		if g.stats.Succeeded > p.succSeq {
			// Others got through meanwhile: the destination is alive but
			// not keeping up (or this attempt is a straggler from before
			// the gate last closed, which says nothing).
			if p.epoch == g.epoch {
				g.rejected(now, 0, p.pace, p.cuts)
			}
		} else {
			ev = g.unreachableLocked(now)
		}
	}
	ev = append(ev, g.dispatchLocked(now)...)
	g.mu.Unlock()
	g.emit(ev)
	g.inst.outcome(o.kind)
}

// Observe reports an outcome learned outside an admitted attempt: a
// keepalive that went unanswered on an established flow (Unreachable), a 503
// to a request the gate does not pace (Overload), an answer on a flow the
// gate did not admit (Success). Unreachable closes the gate at once: the
// attempts that would follow would only go into the same black hole; the
// scouts find out when the path is back — unless an attempt succeeded within
// the last ScoutMax (or, for UnreachableSince(t), after t): then the
// destination answers on other paths. Observe does not count in Stats'
// outcome counters, which are for admitted attempts.
func (g *Gate) Observe(o Outcome) {
	if g == nil {
		return
	}
	now := time.Now()
	g.mu.Lock()
	var ev []GateStateChange
	switch o.kind {
	case kindSuccess, kindClientFailure:
		ev = g.reachableLocked(now)
	case kindOverload:
		ev = g.reachableLocked(now)
		g.rejected(now, o.retryAfter, g.pace, g.cuts)
		if o.retryAfter > 0 {
			ev = append(ev, g.pushBackLocked(now, o.retryAfter)...)
		}
	case kindUnreachable:
		since := o.since
		if since.IsZero() {
			since = now.Add(-g.cfg.ScoutMax)
		} else {
			// The path's last bytes may themselves have completed an
			// attempt (a 200 read just before the silence): only a
			// success clearly later proves another path.
			since = since.Add(time.Second)
		}
		if !g.lastSuccess.After(since) {
			ev = g.unreachableLocked(now)
		}
	}
	ev = append(ev, g.dispatchLocked(now)...)
	g.mu.Unlock()
	g.emit(ev)
}

// Abandon frees the permit's in-flight slot without reporting an outcome: the
// attempt was given up before it told anything about the destination (its
// caller was cancelled mid-dial, say). Calls after Done or Abandon are
// ignored.
func (p *Permit) Abandon() {
	if p == nil || p.g == nil {
		return
	}
	g := p.g
	g.mu.Lock()
	if p.done {
		g.mu.Unlock()
		return
	}
	p.done = true
	g.inFlight--
	if p.scout {
		g.scoutsOut--
	}
	ev := g.dispatchLocked(time.Now())
	g.mu.Unlock()
	g.emit(ev)
}

// reachableLocked handles proof that the destination answers.
func (g *Gate) reachableLocked(now time.Time) []GateStateChange {
	if g.state != GateClosed {
		return nil
	}
	g.scoutFails = 0
	g.epoch++
	g.resetPace(now)
	g.tokens = math.Min(g.tokens, g.burst())
	return g.setStateLocked(GateOpen, time.Time{})
}

func (g *Gate) unreachableLocked(now time.Time) []GateStateChange {
	if g.state == GateClosed {
		return nil // the next scout is already scheduled
	}
	g.scoutFails = 0
	g.nextScout = now.Add(g.scoutDelay())
	return g.setStateLocked(GateClosed, time.Time{})
}

func (g *Gate) uniform() float64 { return uniform(g.cfg.Rand) }

// scoutDelay draws the wait before the next scout: uniform in [d/2, d],
// d = min(ScoutMax, ScoutBase·2^scoutFails).
func (g *Gate) scoutDelay() time.Duration {
	d := float64(capped(g.cfg.ScoutBase, g.cfg.ScoutMax, 2, g.scoutFails))
	return time.Duration(d/2 + g.uniform()*d/2)
}

func (g *Gate) observeRTT(rtt time.Duration) {
	if rtt >= 0 && (g.minRTT == 0 || rtt < g.minRTT) {
		g.minRTT = rtt
	}
}

// accepted feeds a success into the adaptive controller.
func (g *Gate) accepted(now time.Time, pace float64) {
	if g.ep.active {
		g.ep.succ++
		g.ep.offered += pace
		g.maybeEndEpisode(now)
	}
}

// rejected feeds a rejection into the adaptive controller.
func (g *Gate) rejected(now time.Time, retryAfter time.Duration, atPace float64, cuts uint64) {
	if retryAfter > 0 {
		g.lastRA = retryAfter
		if cuts != g.cuts {
			// Admitted before the pace was last cut for a Retry-After:
			// the same overshoot, answered late (the attempts in flight
			// when its first rejection came back). One cut per
			// overshoot, as TCP reduces once per window: without this,
			// a path with a 20 ms round trip cut the pace once per
			// attempt in flight, down to the floor.
			g.rejectedAt = now
			return
		}
	}
	probeOvershot := g.probeFrom > 0 && !g.probedAt.IsZero() && now.Sub(g.probedAt) < g.probeEvery
	if retryAfter > 0 && probeOvershot && !g.rejectedAt.After(g.probedAt) {
		// The last probe overshot, and the destination answered with a
		// Retry-After, which pauses everyone: against such a destination
		// probe half as often (up to every 16 s) while probes overshoot.
		g.probeEvery = min(2*g.probeEvery, 16*defaultProbePeriod)
	}
	if probeOvershot {
		// The probe overshot: back to the pace that did not, at once,
		// rather than after the episode's measurement.
		g.pace = g.probeFrom
		g.probeFrom = 0
		g.tokens = math.Min(g.tokens, g.burst())
	}
	g.rejectedAt = now
	g.cleanProbe = 0
	if !g.adaptive() || math.IsInf(g.pace, 1) {
		return
	}
	if retryAfter > 0 && g.cfg.Rate > 0 && !probeOvershot && g.pace >= 0.9*g.ceiling() &&
		(g.trustAt.IsZero() || now.Sub(g.trustAt) > hiMemory) {
		// Told the rate and pacing just under it: a lone rejection is
		// timing jitter at the destination (a burst across its counting
		// window), and the pause honours it. A second within 10 s means
		// the capacity is lower than configured: cut then.
		g.trustAt = now
		g.cuts++
		return
	}
	if retryAfter > 0 {
		// A destination that pauses everyone at each rejection cannot be
		// measured while it rejects: all it says is that atPace was too
		// fast. Remember that ceiling for a while (probes stay below it)
		// and fall back to the last pace that ran clean.
		if g.hi == 0 || atPace < g.hi || now.Sub(g.hiAt) > hiMemory {
			g.hi = atPace
		}
		g.hiAt = now
		switch {
		case g.startup:
			g.startup = false
			g.pace = g.pace / 2
		case !probeOvershot && now.Sub(g.paceSetAt) >= defaultProbePeriod:
			// A pace that ran clean for a probe period: the capacity
			// moved a little, or jitter; step down gently.
			g.pace = 0.9 * math.Min(g.pace, atPace)
		case !probeOvershot:
			// A pace never yet proven (just after startup or a cut):
			// step down hard, or every step costs another pause.
			g.pace = 0.6 * math.Min(g.pace, atPace)
		}
		g.paceSetAt = now
		g.cuts++
		g.pace = math.Max(g.pace, g.cfg.MinRate)
		g.estimate = g.pace / cruiseGain
		g.tokens = math.Min(g.tokens, g.burst())
		g.ep = episode{}
		return
	}
	if g.startup {
		// The pace just doubled past capacity: back to the last pace that
		// got no rejection, and measure.
		g.startup = false
		g.pace = math.Max(g.pace/2, g.cfg.MinRate)
		g.tokens = math.Min(g.tokens, g.burst())
	}
	if !g.ep.active {
		g.ep = episode{active: true, start: now}
	}
	g.ep.rej++
	g.maybeEndEpisode(now)
}

// maybeEndEpisode turns a long enough measurement into an estimate of the
// rate the destination accepts while it rejects: the larger of the successes
// per second since the first rejection (exact once the destination is
// saturated) and the admission pace times the accepted fraction (exact when
// outcomes lag the pace). Sporadic rejections (under 5 %) at a pace the
// destination otherwise keeps up with are noise: they never lower an
// estimate.
func (g *Gate) maybeEndEpisode(now time.Time) {
	e := &g.ep
	n := e.succ + e.rej
	el := now.Sub(e.start)
	if n < minEpisodeOutcomes || el < minEpisodeDuration {
		return
	}
	est := e.offered / float64(n)
	if !e.paused {
		est = math.Max(est, float64(e.succ)/el.Seconds())
	}
	if float64(e.rej) < 0.05*float64(n) && g.estimate > 0 {
		est = math.Max(est, g.estimate)
	}
	g.estimate = math.Max(est, g.cfg.MinRate)
	g.pace = math.Max(math.Min(cruiseGain*g.estimate, g.ceiling()), g.cfg.MinRate)
	g.tokens = math.Min(g.tokens, g.burst())
	g.ep = episode{}
	g.probeAt = now.Add(g.probeEvery)
}

// control advances the adaptive controller's clock: startup doubling and
// cruise probing, only while attempts are queued (a gate with no demand does
// not inflate its pace).
func (g *Gate) control(now time.Time) {
	if !g.adaptive() || math.IsInf(g.pace, 1) || g.state != GateOpen {
		return
	}
	demand := g.queued() > 0
	if g.startup {
		if now.Before(g.growAt) {
			return
		}
		g.growAt = now.Add(g.startupPeriod())
		if demand {
			g.pace = math.Min(g.pace*2, g.ceiling())
		}
		return
	}
	if g.ep.active {
		if now.Sub(g.ep.start) > 4*defaultProbePeriod {
			// Too few outcomes to measure: fall back to halving.
			g.pace = math.Max(g.pace/2, g.cfg.MinRate)
			g.ep = episode{}
		}
		return
	}
	if now.Before(g.probeAt) {
		return
	}
	g.probeAt = now.Add(g.probeEvery)
	if !g.probedAt.IsZero() && g.rejectedAt.Before(g.probedAt) {
		// The last probe went unpunished: probe more often again.
		g.probeEvery = max(g.probeEvery/2, defaultProbePeriod)
	}
	if !demand || now.Sub(g.rejectedAt) < defaultProbePeriod || g.pace >= g.ceiling() {
		return
	}
	// A second without rejection while attempts queue: probe upward,
	// faster after consecutive clean probes (1.1×, 1.1×, 1.2×, 1.4×,
	// 1.8×, then 2×): a small step first, since the destination's own burst
	// can hide a small excess for a while.
	target := g.pace * math.Min(1+0.1*math.Exp2(float64(max(g.cleanProbe-1, 0))), 2)
	if g.hi > 0 && now.Sub(g.hiAt) < hiMemory {
		// A recent pace drew a Retry-After, and every overshoot pauses
		// everyone. Step a quarter of the way to that ceiling (at least
		// 5 %, at most half-way), and only while the step is worth its
		// risk; stop within 10 % of the ceiling.
		if g.pace >= 0.9*g.hi {
			return
		}
		target = math.Min(math.Max(g.pace*1.05, g.pace+(g.hi-g.pace)/4), (g.pace+g.hi)/2)
		if !g.probeWorthIt(target) {
			return
		}
	}
	g.probedAt = now
	g.cleanProbe++
	g.probeFrom = g.pace
	g.pace = math.Min(target, g.ceiling())
	g.paceSetAt = now
}

// probeWorthIt weighs a probe from the pace up to target against a
// destination that pauses everyone for a Retry-After at each overshoot. With
// the capacity taken as equally likely anywhere between the pace and the
// ceiling hi, the probe fails with probability (target-pace)/(hi-pace) and
// then costs a pause; if it holds, the work still queued goes faster. Near
// the end of a herd, or close under the ceiling, a probe is not worth it.
func (g *Gate) probeWorthIt(target float64) bool {
	if !(target > g.pace) || !(g.hi > g.pace) {
		return false
	}
	pFail := math.Min(1, (target-g.pace)/(g.hi-g.pace))
	remaining := float64(g.queued()) / g.pace // seconds of work at this pace
	gain := (1 - pFail) * remaining * (1 - g.pace/target)
	return gain > pFail*g.lastRA.Seconds()
}

// nextControl returns when control may next change the pace, or zero.
func (g *Gate) nextControl() time.Time {
	switch {
	case !g.adaptive() || math.IsInf(g.pace, 1) || g.state != GateOpen:
		return time.Time{}
	case g.startup:
		return g.growAt
	case g.ep.active:
		return g.ep.start.Add(4 * defaultProbePeriod)
	}
	return g.probeAt
}

// dispatchLocked admits queued waiters while the limits allow and arms the
// timer for the next moment one may be admitted.
func (g *Gate) dispatchLocked(now time.Time) []GateStateChange {
	var ev []GateStateChange
	if g.state == GatePaused && !now.Before(g.pausedUntil) {
		g.pausedUntil = time.Time{}
		// Resume at the pace, without the tokens saved up while paused:
		// the server just said it was full.
		g.refill(now)
		g.tokens = math.Min(g.tokens, 1)
		// The pace that drew the push-back has not run a clean period
		// yet: no probe before it has, and it is not proven.
		g.rejectedAt = now
		g.paceSetAt = now
		ev = g.setStateLocked(GateOpen, time.Time{})
	}
	g.control(now)
	g.refill(now)
	for g.queued() > 0 {
		switch g.state {
		case GatePaused:
			g.armLocked(g.pausedUntil)
			return ev
		case GateClosed:
			// One scout at a time; but a scout lost in a black hole (no
			// answer, no error: its caller waits for a timeout) must not
			// hide the path's return, so after ScoutMax another may go.
			// Scouts too respect a push-back that is still running (the
			// gate closed during a pause: attempts admitted before it came
			// back unreachable).
			at := laterOf(g.nextScout, g.pausedUntil)
			if g.scoutsOut > 0 {
				at = laterOf(at, g.scoutAt.Add(g.cfg.ScoutMax))
			}
			if now.Before(at) {
				g.armLocked(at)
				return ev
			}
			g.scoutFails++
			g.scoutAt = now
			g.nextScout = now.Add(g.scoutDelay())
			g.admitLocked(now, true)
			continue
		}
		if g.cfg.MaxInFlight > 0 && g.inFlight >= g.cfg.MaxInFlight {
			return ev
		}
		if !math.IsInf(g.pace, 1) {
			if g.tokens < 1 {
				wait := time.Duration(math.Min((1-g.tokens)/g.pace, MaxDelay.Seconds()) * float64(time.Second))
				at := now.Add(max(wait, time.Microsecond))
				if c := g.nextControl(); c.After(now) && c.Before(at) {
					at = c // the pace may change before then
				}
				g.armLocked(at)
				return ev
			}
			if at, ok := g.smoothedUntil(now); !ok {
				g.armLocked(at)
				return ev
			}
			g.tokens--
			g.noteAdmission(now)
		}
		g.admitLocked(now, false)
	}
	return ev
}

// smoothSlots is the most admissions the gate lets through in any 100 ms:
// pace × 100 ms. The token bucket alone lets a late timer catch up with a
// burst, and a burst on top of a pace just under a server's limit overruns
// a limit counted per 100 ms window (as Kamailio's are): the 503 then pauses
// everyone. Zero: no guard (a configured Burst, a pace under 10/s or over
// 10,240/s).
func (g *Gate) smoothSlots() int {
	if g.cfg.Burst > 0 || math.IsInf(g.pace, 1) {
		return 0
	}
	k := math.Floor(g.pace * smoothWindow.Seconds())
	if k < 1 || k > maxSmoothSlots {
		return 0
	}
	return int(k)
}

// smoothedUntil reports whether an admission at now keeps the last 100 ms
// within smoothSlots, and if not, when it will.
func (g *Gate) smoothedUntil(now time.Time) (time.Time, bool) {
	k := g.smoothSlots()
	if k == 0 || g.recentN < k {
		return time.Time{}, true
	}
	// The k-th most recent admission.
	kth := g.born.Add(g.recent[(g.recentNext-k+maxSmoothSlots)%maxSmoothSlots])
	if free := kth.Add(smoothWindow); now.Before(free) {
		return free, false
	}
	return time.Time{}, true
}

func (g *Gate) noteAdmission(now time.Time) {
	if g.recent == nil {
		if g.smoothSlots() == 0 {
			return // never needed yet: no ring
		}
		g.born = now
		g.recent = make([]time.Duration, maxSmoothSlots)
	}
	g.recent[g.recentNext] = now.Sub(g.born)
	g.recentNext = (g.recentNext + 1) % maxSmoothSlots
	g.recentN = min(g.recentN+1, maxSmoothSlots)
}

func (g *Gate) queued() int { return g.queue.Len() + g.prio.Len() }

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (g *Gate) refill(now time.Time) {
	if g.last.IsZero() || now.Before(g.last) {
		g.last = now
		return
	}
	if !math.IsInf(g.pace, 1) {
		g.tokens = math.Min(g.tokens+now.Sub(g.last).Seconds()*g.pace, g.burst())
	}
	g.last = now
}

func (g *Gate) admitLocked(now time.Time, scout bool) {
	q := &g.prio
	if q.Len() == 0 {
		q = &g.queue
	}
	w := q.Remove(q.Front()).(*waiter)
	p := &Permit{g: g, admitted: now, succSeq: g.stats.Succeeded, epoch: g.epoch, pace: g.pace, cuts: g.cuts, scout: scout}
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

func (g *Gate) setStateLocked(to GateState, until time.Time) []GateStateChange {
	if g.state == to && to != GatePaused {
		return nil
	}
	from := g.state
	g.state = to
	return []GateStateChange{{Destination: g.cfg.Destination, From: from, To: to, Until: until}}
}

func (g *Gate) emit(ev []GateStateChange) {
	for _, e := range ev {
		if e.From == e.To && e.To != GatePaused {
			continue
		}
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
