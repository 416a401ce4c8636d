package sip

import (
	"context"
	"errors"
	"log/slog"
	mrand "math/rand/v2"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ctxtime"
)

// result is how one registration attempt (an exchange) ended.
type result struct {
	act        action // a final action
	err        error
	granted    time.Duration
	retryAfter time.Duration
}

// runner is the state of one Run. It lives on Run's goroutine: nothing in
// it is shared, so nothing in it is locked. Flow deaths reach it as events
// (Trunk.deaths) that it takes when it looks.
type runner struct {
	t      *Trunk
	bo     backoff.BackOff
	timer  *time.Timer
	cur    int       // index of the target in use
	on     int       // index of the target holding our binding, -1 if none
	lost   bool      // a registration was lost and not yet regained
	until  time.Time // the end of the binding held at on
	looked time.Time // the last lookup of registrars given by name

	bound    *flow // the flow holding the binding (TCP/TLS), subscribed
	boundErr error // bound died: the binding is lost
	pend     *flow // the flow of the REGISTER in flight, subscribed
	pendErr  error // pend died: the transaction fails
}

// flowDeath is the event of a flow's death, queued for the runner.
type flowDeath struct {
	f   *flow
	err error
}

// deathQueue carries flow deaths to the runner. push never blocks (a flow
// dies on its own timer goroutine, or on the runner's when a qualify
// fails); the runner selects on ready and then takes the queue.
type deathQueue struct {
	mu    sync.Mutex
	q     []flowDeath
	ready chan struct{} // capacity 1: something was pushed
}

func (d *deathQueue) push(ev flowDeath) {
	d.mu.Lock()
	d.q = append(d.q, ev)
	d.mu.Unlock()
	select {
	case d.ready <- struct{}{}:
	default:
	}
}

func (d *deathQueue) take() []flowDeath {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := d.q
	d.q = nil
	return q
}

// absorb takes the queued flow deaths and notes those of the runner's
// flows; deaths of flows it left are dropped.
func (r *runner) absorb(ctx context.Context) {
	for _, ev := range r.t.deaths.take() {
		if ev.f == r.bound {
			r.bound, r.boundErr = nil, ev.err
			if r.on >= 0 {
				tg := r.t.tgts[r.on]
				r.t.inst.flowDeaths.Add(context.WithoutCancel(ctx), 1, tg.attrs.server)
			}
		}
		if ev.f == r.pend {
			r.pend, r.pendErr = nil, ev.err
		}
	}
}

// watch subscribes the runner to the flow of the connection a request went
// out on to remote (IP:port for UDP), so that its death fails the transaction at
// once: a TCP, TLS, WS or WSS flow (pinged unless this trunk's keepalive is
// off), or a UDP one (its trunks' failed qualify kills it).
func (r *runner) watch(c flowConn, network, remote string, tg *regTarget) *flow {
	t := r.t
	if c == nil {
		return nil
	}
	var f *flow
	switch {
	case network == "udp" && remote != "":
		f = t.mon.attachUDP(c, remote, t)
	case t.cfg.keepAlive > 0:
		f = t.mon.attach(c, network, t, t.pref(tg))
	}
	if f == nil {
		return nil
	}
	r.pend, r.pendErr = f, nil
	if err := f.deadErr(); err != nil {
		r.pend, r.pendErr = nil, err
	}
	return f
}

// endWatch ends the watch of a transaction's flow; bind makes it the flow
// holding the binding (the REGISTER succeeded on it).
func (r *runner) endWatch(f *flow, bind bool) {
	if r.pend == f {
		r.pend = nil
	}
	r.pendErr = nil
	if f == nil {
		return
	}
	if !bind {
		if f != r.bound {
			f.detach(r.t)
		}
		return
	}
	if old := r.bound; old != nil && old != f {
		old.detach(r.t)
	}
	r.bound, r.boundErr = f, nil
	if err := f.deadErr(); err != nil {
		r.bound, r.boundErr = nil, err
	}
}

// dropFlow leaves the binding flow (the binding is gone or being replaced).
func (r *runner) dropFlow(ctx context.Context) {
	if f := r.bound; f != nil {
		f.detach(r.t)
	}
	r.bound, r.boundErr = nil, nil
	r.absorb(ctx)
	r.boundErr = nil
}

// sleep waits d or until ctx ends (false). A negative d waits for ctx.
func (r *runner) sleep(ctx context.Context, d time.Duration) bool {
	if d < 0 {
		<-ctx.Done()
		return false
	}
	return ctxtime.Sleep(ctx, d)
}

// next moves on to the next target, wrapping around. Having gone through
// them all without a registration, it looks the registrars given by name up
// again (at most every minLookupInterval).
func (r *runner) next(ctx context.Context) {
	if len(r.t.tgts) > 1 {
		r.t.tgts[r.cur].redirect = nil
		r.cur = (r.cur + 1) % len(r.t.tgts)
	}
	if r.cur == 0 && r.on < 0 && time.Since(r.looked) >= minLookupInterval {
		r.lookup(ctx)
	}
}

// lookup (re)resolves the registrars given by name (RFC 3263).
func (r *runner) lookup(ctx context.Context) {
	r.looked = time.Now()
	r.t.expand(ctx)
	for _, tg := range r.t.tgts {
		if tg.gate == nil { // a name used as configured: sipgo resolves it
			tg.gate = r.t.gateFor(tg.key)
		}
	}
	r.cur = 0
}

func (r *runner) loop(ctx context.Context) {
	t := r.t
	var delay time.Duration
	r.lookup(ctx)
	for {
		if !r.sleep(ctx, delay) {
			return
		}
		tg := t.tgts[r.cur]
		t.setCurrent(tg)
		if s := t.State(); s == Unregistered || s == Failed {
			t.setState(ctx, Registering, tg, nil, 0)
		}
		res := r.attempt(ctx, tg)
		if res.act == stopped {
			return
		}
		if res.act == registered {
			r.registered(ctx, tg, res)
			if !r.keep(ctx) {
				return
			}
			delay = 0
			continue
		}
		delay = r.failedAttempt(ctx, tg, res)
	}
}

// failedAttempt moves the trunk to Backoff or Failed after an attempt that
// did not register, and returns how long to wait before the next.
func (r *runner) failedAttempt(ctx context.Context, tg *regTarget, res result) time.Duration {
	t := r.t
	if r.on == r.cur {
		r.on = -1 // a failed refresh: the binding may be gone
	}
	if t.State() == Registered {
		r.lost = true
	}
	r.dropFlow(ctx)
	switch res.act {
	case unreachable:
		// The gate closes and scouts: no private backoff, so that the
		// trunk is back as soon as the path is.
		t.setState(ctx, Backoff, tg, res.err, 0)
		r.next(ctx)
		return 0
	case pushedBack:
		t.setState(ctx, Backoff, tg, res.err, 0)
		r.next(ctx)
		if res.retryAfter > 0 {
			return 0 // the gate is paused for everyone
		}
		return r.nextBackOff()
	case backOff:
		t.setState(ctx, Backoff, tg, res.err, 0)
		return r.nextBackOff()
	}
	t.setState(ctx, Failed, tg, res.err, 0)
	return r.slowRetry()
}

func (r *runner) nextBackOff() time.Duration {
	d := r.bo.NextBackOff()
	if d == backoff.Stop {
		return r.slowRetry()
	}
	return d
}

// slowRetry is the wait after a refusal; negative: never again.
func (r *runner) slowRetry() time.Duration {
	s := r.t.cfg.SlowRetry
	if s < 0 {
		return -1
	}
	return s + time.Duration(mrand.Float64()*0.1*float64(s))
}

func (r *runner) registered(ctx context.Context, tg *regTarget, res result) {
	t := r.t
	r.on = r.cur
	r.until = time.Now().Add(res.granted)
	r.bo.Reset()
	if r.lost {
		r.lost = false
		t.inst.recoveries.Add(ctx, 1, tg.attrs.server)
	}
	t.publishBinding(tg, res.granted)
	t.setState(ctx, Registered, tg, nil, res.granted)
}

// refreshDelay returns when to refresh a binding granted for g: a random
// point between 75 % and 85 % of it.
func refreshDelay(g time.Duration) time.Duration {
	return time.Duration(float64(g) * (0.75 + 0.1*mrand.Float64()))
}

// schedule is when keep wakes next: the refresh, and the failback and
// qualify timers when they run (zero when off).
type schedule struct{ refresh, failback, qualify time.Time }

func (s schedule) next() time.Time {
	at := s.refresh
	for _, u := range [...]time.Time{s.failback, s.qualify} {
		if !u.IsZero() && u.Before(at) {
			at = u
		}
	}
	return at
}

// newSchedule is keep's timetable for a binding just granted at tg.
func (r *runner) newSchedule(tg *regTarget) schedule {
	now := time.Now()
	s := schedule{refresh: now.Add(refreshDelay(tg.lastGrant()))}
	if r.cur != 0 && r.t.cfg.FailbackInterval > 0 {
		s.failback = now.Add(r.t.cfg.FailbackInterval)
	}
	if q := r.t.cfg.qualifyFor(&tg.target); q > 0 && !r.t.cfg.OptionsOnly {
		// An OptionsOnly trunk's refresh is its OPTIONS.
		s.qualify = now.Add(q)
	}
	return s
}

// keep waits while registered: it refreshes, fails back to the first
// registrar, qualifies, and returns when the registration is lost or due
// for refresh (true: the loop registers again at once) or ctx ends (false).
func (r *runner) keep(ctx context.Context) bool {
	tg := r.t.tgts[r.cur]
	s := r.newSchedule(tg)
	for {
		r.absorb(ctx)
		if err := r.boundErr; err != nil {
			r.flowLost(ctx, tg, err)
			return true
		}
		if r.timer == nil {
			r.timer = time.NewTimer(time.Until(s.next()))
		} else {
			r.timer.Reset(time.Until(s.next()))
		}
		select {
		case <-ctx.Done():
			r.timer.Stop()
			return false
		case <-r.t.deaths.ready:
			r.timer.Stop()
			continue // the top of the loop looks
		case <-r.timer.C:
		}
		now := time.Now()
		switch {
		case !s.qualify.IsZero() && !now.Before(s.qualify):
			s.qualify = now.Add(r.t.cfg.qualifyFor(&tg.target))
			if err := r.qualify(ctx, tg); err != nil {
				return r.qualifyFailed(ctx, tg, err)
			}
		case !s.failback.IsZero() && !now.Before(s.failback):
			if r.failback(ctx) {
				tg = r.t.tgts[r.cur] // registered with the first: keep it
				s = r.newSchedule(tg)
				continue
			}
			if ctx.Err() != nil {
				return false
			}
			s.failback = time.Now().Add(r.t.cfg.FailbackInterval)
		default:
			return true // refresh: the loop sends the REGISTER
		}
	}
}

// qualifyFailed handles an OPTIONS without answer: the flow is declared
// dead for every trunk on it.
func (r *runner) qualifyFailed(ctx context.Context, tg *regTarget, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if f := r.bound; f != nil {
		f.fail(err) // every trunk on the flow re-registers
		r.absorb(ctx)
	}
	r.boundErr = nil
	r.flowLost(ctx, tg, &flowError{cause: err})
	return true
}

// flowLost handles the death of the flow the trunk was registered over.
func (r *runner) flowLost(ctx context.Context, tg *regTarget, err error) {
	t := r.t
	r.boundErr = nil
	// A dead flow proves the registrar unreachable: close its gate now,
	// before this trunk and every other on the flow ask it for permits that
	// would only send REGISTERs into the same black hole.
	o := backoff.Unreachable
	var fe *flowError
	if errors.As(err, &fe) && !fe.silentSince.IsZero() {
		// A success after the flow went silent (on another connection)
		// proves the registrar reachable: the gate then stays open.
		o = backoff.UnreachableSince(fe.silentSince)
	}
	tg.gate.Observe(o)
	r.on = -1
	r.lost = true
	t.setState(ctx, Registering, tg, err, 0)
	r.next(ctx)
}

// failback tries the first registrar while registered with another. On
// success it removes the binding from the backup and reports true.
func (r *runner) failback(ctx context.Context) bool {
	t := r.t
	first := t.tgts[0]
	old := r.cur
	res := r.attempt(ctx, first)
	if res.act != registered {
		first.redirect = nil
		// Back on the backup's flow for liveness.
		return false
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "sip trunk failed back",
		slog.String("registrar", first.raw), slog.String("backup", t.tgts[old].raw))
	r.unregisterFrom(ctx, t.tgts[old])
	r.cur, r.on = 0, 0
	r.until = time.Now().Add(res.granted)
	t.setCurrent(first)
	r.bo.Reset()
	t.publishBinding(first, res.granted)
	t.setState(ctx, Registered, first, nil, res.granted)
	return true
}

// shutdown unregisters (bounded) from every registrar that may hold a
// binding of this trunk: the one it is registered with, one whose refresh
// failed while the binding lasts, one a REGISTER was in flight to when ctx
// ended (its 200 may come after Run returns); then it leaves the flow.
func (r *runner) shutdown(ctx context.Context) {
	t := r.t
	now := time.Now()
	for _, tg := range t.everyTarget() {
		if tg.held.After(now) {
			r.unregisterFrom(ctx, tg)
		}
	}
	r.dropFlow(ctx)
	t.setState(context.WithoutCancel(ctx), Unregistered, t.tgts[max(r.on, 0)], context.Cause(ctx), 0)
}

// attempt makes one registration attempt with tg: the REGISTER, and the
// follow-ups that answer a challenge, a 423 or a 3xx, each admitted by the
// registrar's gate. One span per attempt.
func (r *runner) attempt(ctx context.Context, tg *regTarget) result {
	t := r.t
	name := "sip.register"
	if t.cfg.OptionsOnly {
		name = "sip.options"
	}
	ctx, span := t.inst.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tg.attrs.spanAttrs...))
	// A refresh of a binding we hold waits ahead of recovering trunks, so
	// that a herd's recovery does not make the survivors' bindings lapse.
	refresh := r.on >= 0 && r.on == r.cur
	var res result
	if t.cfg.OptionsOnly {
		res = r.ping(ctx, tg, refresh)
	} else {
		res = r.exchange(ctx, tg, tg.expires, refresh)
	}
	if res.err != nil && res.act != stopped {
		span.RecordError(res.err)
		span.SetStatus(codes.Error, res.err.Error())
	}
	if res.act == registered {
		span.SetAttributes(attribute.Int64("sip.expires", int64(res.granted/time.Second)))
	}
	span.End()
	return res
}
