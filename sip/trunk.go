package sip

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
)

// ErrRunning is returned by Run when the Trunk is already running.
var ErrRunning = errors.New("sip: trunk already running")

// Trunk keeps one registration alive with a registrar: it registers,
// refreshes before expiry, watches the flow it registered over, and
// re-registers (through the registrar's Gate) when the flow dies or a refresh
// fails. Create it with NewTrunk and drive it with Run. Its methods are safe
// for concurrent use.
type Trunk struct {
	cfg  *resolved
	txl  *sipmsg.TransactionLayer
	tp   *sipmsg.TransportLayer
	mon  *flowMonitor
	inst *instruments
	log  *slog.Logger
	tgts []*regTarget

	box     stateBox
	running atomic.Bool
	wake    chan struct{} // a flow the trunk uses died
	// onState is set by a Fleet before Run; called with every change.
	onState func(from, to State)

	txCount atomic.Uint64 // REGISTER transactions sent

	mu      sync.Mutex
	flow    *flow // the flow holding the binding (TCP/TLS), subscribed
	flowErr error // set by flowDead when flow died
	pend    *flow // the flow of the REGISTER in flight, subscribed
	pendErr error // set by flowDead when pend died
	current string
	// acqCancel, while a refresh waits for the gate, ends that wait when
	// the flow holding the binding dies.
	acqCancel context.CancelCauseFunc
}

// regTarget is the per-registrar state of a trunk: RFC 3261 §10.2 wants one
// Call-ID per registrar and a CSeq counting up across refreshes.
type regTarget struct {
	target
	gate      *backoff.Gate
	attrs     *targetAttrs
	callID    string
	fromTag   string
	cseq      uint32
	auth      authState
	expires   time.Duration // asked for; raised by 423
	redirect  *sipmsg.Uri   // set by a 3xx, cleared on failure
	flowTimer time.Duration // from the last 200 OK
	grant     time.Duration // from the last 200 OK
	bound     *sipmsg.Uri   // the Contact of our binding, if any
	localIP   net.IP        // cached outbound address for UDP Contacts
}

// NewTrunk returns a Trunk that registers cfg.AOR on ua. It validates cfg
// (errors wrap ErrInvalidConfig) and does no I/O. The UserAgent should come
// from NewUA, so that relink can watch its TCP and TLS flows with CRLF pings;
// any other sipgo UserAgent works with OPTIONS probes instead. NewTrunk never
// calls sipgo's global setters.
func NewTrunk(ua *sipgo.UserAgent, cfg TrunkConfig) (*Trunk, error) {
	return newTrunk(ua, cfg, nil, nil)
}

// newTrunk is NewTrunk with a Fleet's shared instruments and gates.
func newTrunk(ua *sipgo.UserAgent, cfg TrunkConfig, inst *instruments, gateFor func(key string) *backoff.Gate) (*Trunk, error) {
	if ua == nil {
		return nil, configErr("nil UserAgent")
	}
	rc, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if inst == nil {
		inst = newInstruments(rc.MeterProvider, rc.TracerProvider)
	}
	t := &Trunk{
		cfg:  rc,
		txl:  ua.TransactionLayer(),
		tp:   ua.TransportLayer(),
		mon:  monitorFor(ua),
		inst: inst,
		wake: make(chan struct{}, 1),
	}
	t.box.init()
	t.log = rc.Logger.With(slog.String("aor", rc.aor.Addr()))
	for _, tg := range rc.targets {
		rt := &regTarget{target: tg, expires: rc.Expires,
			attrs:   newTargetAttrs(strings.TrimPrefix(tg.key, tg.transport+"/"), tg.transport),
			callID:  rand.Text(),
			fromTag: rand.Text()[:16],
		}
		switch {
		case rc.Gate != nil:
			rt.gate = rc.Gate
		case gateFor != nil:
			rt.gate = gateFor(tg.key)
		default:
			rt.gate = backoff.NewGate(backoff.GateConfig{Destination: tg.key,
				MeterProvider: rc.MeterProvider})
		}
		t.tgts = append(t.tgts, rt)
	}
	t.current = t.tgts[0].raw
	return t, nil
}

// State returns the trunk's current state.
func (t *Trunk) State() State { return t.box.get() }

// WaitForStateChange blocks until the state differs from from, and reports
// true; or until ctx ends, and reports false.
func (t *Trunk) WaitForStateChange(ctx context.Context, from State) bool {
	return t.box.wait(ctx, from)
}

// AOR returns the address-of-record the trunk registers.
func (t *Trunk) AOR() string { return t.cfg.AOR }

// Registrar returns the URI of the registrar the trunk uses now.
func (t *Trunk) Registrar() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current
}

// Transactions returns the number of REGISTER transactions the trunk has
// sent (each challenge answer and each retry counts).
func (t *Trunk) Transactions() uint64 { return t.txCount.Load() }

func (t *Trunk) setState(ctx context.Context, to State, tg *regTarget, err error, expires time.Duration) {
	// The counts (a Fleet's, the registrations-by-state instrument)
	// change with the state, before anyone waiting on it wakes.
	from, changed := t.box.set(to, func(from, to State) {
		t.inst.stateChanged(ctx, from, to, true)
		if t.onState != nil {
			t.onState(from, to)
		}
	})
	if !changed {
		return
	}
	reg := ""
	if tg != nil {
		reg = tg.raw
	}
	if t.log.Enabled(ctx, slog.LevelInfo) {
		attrs := []slog.Attr{slog.String("from", from.String()), slog.String("to", to.String()),
			slog.String("registrar", reg)}
		if err != nil {
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		if expires > 0 {
			attrs = append(attrs, slog.Duration("expires", expires))
		}
		t.log.LogAttrs(ctx, slog.LevelInfo, "sip trunk state", attrs...)
	}
	if t.cfg.OnStateChange != nil {
		t.cfg.OnStateChange(StateChange{Trunk: t, From: from, To: to, Registrar: reg,
			Err: err, Expires: expires, At: time.Now()})
	}
}

// flowDead implements flowSub: a flow the trunk uses died.
func (t *Trunk) flowDead(f *flow, err error) {
	t.mu.Lock()
	bound, pending := f == t.flow, f == t.pend
	cur := t.current
	if bound {
		t.flow, t.flowErr = nil, err
		if t.acqCancel != nil {
			t.acqCancel(&flowError{cause: err})
		}
	}
	if pending {
		t.pend, t.pendErr = nil, err
	}
	t.mu.Unlock()
	if !bound && !pending {
		return
	}
	if bound {
		for _, tg := range t.tgts {
			if tg.raw == cur {
				t.inst.flowDeaths.Add(context.Background(), 1, tg.attrs.server)
				break
			}
		}
	}
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// takeFlowErr returns and clears the error of a dead binding flow, if any.
func (t *Trunk) takeFlowErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.flowErr
	t.flowErr = nil
	return err
}

func (t *Trunk) pref(tg *regTarget) flowPref {
	p := flowPref{interval: t.cfg.keepAlive, timeout: t.cfg.kaTimeout}
	if tg.flowTimer > 0 && tg.flowTimer < p.interval {
		p.interval = tg.flowTimer
	}
	return p
}

// watchPending subscribes the trunk to the flow of the connection a REGISTER
// went out on (TCP/TLS), so that its death fails the transaction at once.
func (t *Trunk) watchPending(c sipmsg.Connection, network string, tg *regTarget) *flow {
	if t.cfg.keepAlive <= 0 {
		return nil
	}
	f := t.mon.attach(c, network, t, t.pref(tg))
	if f == nil {
		return nil
	}
	t.mu.Lock()
	t.pend, t.pendErr = f, nil
	t.mu.Unlock()
	if err := f.deadErr(); err != nil {
		t.flowDead(f, err)
	}
	return f
}

// endPending ends the watch of a transaction's flow; bind makes it the flow
// holding the binding (the REGISTER succeeded on it).
func (t *Trunk) endPending(f *flow, bind bool) {
	t.mu.Lock()
	if t.pend == f {
		t.pend = nil
	}
	t.pendErr = nil
	old := t.flow
	if bind {
		t.flow, t.flowErr = f, nil
	}
	cur := t.flow
	t.mu.Unlock()
	if bind && old != nil && old != f {
		old.detach(t)
	}
	if !bind && f != nil && f != cur {
		f.detach(t)
	}
	if bind && f != nil {
		if err := f.deadErr(); err != nil {
			t.flowDead(f, err)
		}
	}
}

// dropFlow leaves the binding flow (the binding is gone or being replaced).
func (t *Trunk) dropFlow() {
	t.mu.Lock()
	f := t.flow
	t.flow, t.flowErr = nil, nil
	t.mu.Unlock()
	if f != nil {
		f.detach(t)
	}
	select {
	case <-t.wake:
	default:
	}
}

func (t *Trunk) setCurrent(tg *regTarget) {
	t.mu.Lock()
	t.current = tg.raw
	t.mu.Unlock()
}

// Run registers and keeps the registration alive until ctx ends; then it
// removes the binding (Expires: 0, bounded by UnregisterTimeout) and returns
// context.Cause(ctx). It returns ErrRunning if the trunk is already running.
// A Trunk may be Run again after Run returned.
func (t *Trunk) Run(ctx context.Context) error {
	if !t.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer t.running.Store(false)
	t.inst.registrations.Add(ctx, 1, stateOpts[t.State()])
	r := &runner{t: t, bo: t.cfg.Backoff(), timer: time.NewTimer(time.Hour), on: -1}
	r.timer.Stop()
	r.loop(ctx)
	r.timer.Stop()
	r.shutdown(ctx)
	t.inst.registrations.Add(context.WithoutCancel(ctx), -1, stateOpts[t.State()])
	return context.Cause(ctx)
}

// kind classifies the end of a registration attempt.
type kind int

const (
	kRegistered  kind = iota
	kUnreachable      // timeout, transport error, dead flow, 408
	kOverload         // 503
	kServerError      // 500, 502, 504, other 5xx, too many 3xx
	kRejected         // credentials rejected, 403, 404, other 4xx, 6xx
	kStopped          // ctx ended
)

type result struct {
	kind       kind
	err        error
	granted    time.Duration
	retryAfter time.Duration
	answered   bool // some response arrived during the attempt
}

// outcome is what the attempt tells the registrar's gate.
func (r result) outcome() backoff.Outcome {
	switch r.kind {
	case kRegistered:
		return backoff.Success
	case kUnreachable:
		return backoff.Unreachable
	case kOverload:
		return backoff.Overload(r.retryAfter)
	case kServerError:
		return backoff.Overload(0)
	}
	// Rejected, and attempts abandoned because the trunk is stopping: the
	// client's own business, which says nothing against the registrar.
	return backoff.ClientFailure
}

// runner is the state of one Run.
type runner struct {
	t     *Trunk
	bo    backoff.BackOff
	timer *time.Timer
	cur   int  // index of the target in use
	on    int  // index of the target holding our binding, -1 if none
	lost  bool // a registration was lost and not yet regained
}

// sleep waits d or until ctx ends (false).
func (r *runner) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	r.timer.Reset(d)
	select {
	case <-r.timer.C:
		return true
	case <-ctx.Done():
		r.timer.Stop()
		return false
	}
}

func (r *runner) next() {
	if len(r.t.tgts) > 1 {
		r.t.tgts[r.cur].redirect = nil
		r.cur = (r.cur + 1) % len(r.t.tgts)
	}
}

func (r *runner) loop(ctx context.Context) {
	t := r.t
	var delay time.Duration
	for {
		if !r.sleep(ctx, delay) {
			return
		}
		delay = 0
		tg := t.tgts[r.cur]
		t.setCurrent(tg)
		if s := t.State(); s == Unregistered || s == Failed {
			t.setState(ctx, Registering, tg, nil, 0)
		}
		res := r.attempt(ctx, tg)
		switch res.kind {
		case kStopped:
			return
		case kRegistered:
			r.registered(ctx, tg, res)
			if !r.keep(ctx) {
				return
			}
			continue
		}
		if r.on == r.cur {
			r.on = -1 // a failed refresh: the binding may be gone
		}
		if t.State() == Registered {
			r.lost = true
		}
		t.dropFlow()
		switch res.kind {
		case kUnreachable:
			// The gate closes and scouts: no private backoff, so that the
			// trunk is back as soon as the path is.
			t.setState(ctx, Backoff, tg, res.err, 0)
			r.next()
		case kOverload:
			t.setState(ctx, Backoff, tg, res.err, 0)
			if res.retryAfter <= 0 {
				delay = r.nextBackOff()
			}
			// With a Retry-After the gate is paused for everyone.
			r.next()
		case kServerError:
			t.setState(ctx, Backoff, tg, res.err, 0)
			delay = r.nextBackOff()
		case kRejected:
			t.setState(ctx, Failed, tg, res.err, 0)
			delay = r.slowRetry()
		}
	}
}

func (r *runner) nextBackOff() time.Duration {
	d := r.bo.NextBackOff()
	if d == backoff.Stop {
		return r.slowRetry()
	}
	return d
}

func (r *runner) slowRetry() time.Duration {
	s := r.t.cfg.SlowRetry
	return s + time.Duration(mrand.Float64()*0.1*float64(s))
}

func (r *runner) registered(ctx context.Context, tg *regTarget, res result) {
	t := r.t
	r.on = r.cur
	r.bo.Reset()
	if r.lost {
		r.lost = false
		t.inst.recoveries.Add(ctx, 1, tg.attrs.server)
	}
	t.setState(ctx, Registered, tg, nil, res.granted)
}

// refreshDelay returns when to refresh a binding granted for g: a random
// point between 75 % and 85 % of it.
func refreshDelay(g time.Duration) time.Duration {
	return time.Duration(float64(g) * (0.75 + 0.1*mrand.Float64()))
}

// keep waits while registered: it refreshes, fails back to the first
// registrar, qualifies, and returns when the registration is lost (true: the
// loop registers again at once) or ctx ends (false).
func (r *runner) keep(ctx context.Context) bool {
	t := r.t
	tg := t.tgts[r.cur]
	granted := tg.lastGrant()
	refreshAt := time.Now().Add(refreshDelay(granted))
	var failbackAt, qualifyAt time.Time
	if r.cur != 0 {
		failbackAt = time.Now().Add(t.cfg.FailbackInterval)
	}
	if t.cfg.Qualify > 0 {
		qualifyAt = time.Now().Add(t.cfg.Qualify)
	}
	for {
		if err := t.takeFlowErr(); err != nil {
			r.flowLost(ctx, tg, err)
			return true
		}
		wakeAt := refreshAt
		if !failbackAt.IsZero() && failbackAt.Before(wakeAt) {
			wakeAt = failbackAt
		}
		if !qualifyAt.IsZero() && qualifyAt.Before(wakeAt) {
			wakeAt = qualifyAt
		}
		r.timer.Reset(time.Until(wakeAt))
		select {
		case <-ctx.Done():
			r.timer.Stop()
			return false
		case <-t.wake:
			r.timer.Stop()
			continue // the top of the loop looks
		case <-r.timer.C:
		}
		now := time.Now()
		switch {
		case !qualifyAt.IsZero() && !now.Before(qualifyAt):
			qualifyAt = now.Add(t.cfg.Qualify)
			if err := t.qualify(ctx, tg); err != nil {
				if ctx.Err() != nil {
					return false
				}
				t.mu.Lock()
				f := t.flow
				t.mu.Unlock()
				if f != nil {
					f.fail(err) // every trunk on the flow re-registers
					t.takeFlowErr()
				}
				r.flowLost(ctx, tg, &flowError{cause: err})
				return true
			}
		case !failbackAt.IsZero() && !now.Before(failbackAt):
			if r.failback(ctx) {
				return true // registered with the first; loop refreshes there
			}
			if ctx.Err() != nil {
				return false
			}
			failbackAt = time.Now().Add(t.cfg.FailbackInterval)
		default:
			return true // refresh: the loop sends the REGISTER
		}
	}
}

// flowLost handles the death of the flow the trunk was registered over.
func (r *runner) flowLost(ctx context.Context, tg *regTarget, err error) {
	t := r.t
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
	r.next()
}

// failback tries the first registrar while registered with another. On
// success it removes the binding from the backup and reports true.
func (r *runner) failback(ctx context.Context) bool {
	t := r.t
	first := t.tgts[0]
	old := r.cur
	res := r.attempt(ctx, first)
	if res.kind != kRegistered {
		first.redirect = nil
		// Back on the backup's flow for liveness.
		return false
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "sip trunk failed back",
		slog.String("registrar", first.raw), slog.String("backup", t.tgts[old].raw))
	r.unregisterFrom(ctx, t.tgts[old])
	r.cur, r.on = 0, 0
	t.setCurrent(first)
	r.bo.Reset()
	t.setState(ctx, Registered, first, nil, res.granted)
	return true
}

func (r *runner) unregisterFrom(ctx context.Context, tg *regTarget) {
	t := r.t
	if t.cfg.UnregisterTimeout < 0 {
		return
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.UnregisterTimeout)
	defer cancel()
	var res result
	for {
		// Through the registrar's gate like every REGISTER: a fleet that
		// stops unregisters all its trunks at once, and a registrar that
		// limits its rate answers the excess with 503, which would leave
		// those bindings behind until they expire. A 503 is retried within
		// the bound, after its Retry-After (the gate pauses for it).
		res = t.exchange(uctx, tg, 0, tg.gate, false)
		if res.kind != kOverload || uctx.Err() != nil {
			break
		}
	}
	if res.kind != kRegistered && t.log.Enabled(ctx, slog.LevelDebug) {
		t.log.LogAttrs(ctx, slog.LevelDebug, "sip unregister failed",
			slog.String("registrar", tg.raw), slog.Any("error", res.err))
	}
}

// shutdown unregisters (bounded) and leaves the flow.
func (r *runner) shutdown(ctx context.Context) {
	t := r.t
	if r.on >= 0 {
		r.unregisterFrom(ctx, t.tgts[r.on])
	}
	t.dropFlow()
	t.setState(context.WithoutCancel(ctx), Unregistered, t.tgts[max(r.on, 0)], context.Cause(ctx), 0)
}

// attempt makes one registration attempt with tg: the REGISTER, and the
// follow-ups that answer a challenge, a 423 or a 3xx, each admitted by the
// registrar's gate. One span per attempt.
func (r *runner) attempt(ctx context.Context, tg *regTarget) result {
	t := r.t
	ctx, span := t.inst.tracer.Start(ctx, "sip.register", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tg.attrs.spanAttrs...))
	// A refresh of a binding we hold waits ahead of recovering trunks, so
	// that a herd's recovery does not make the survivors' bindings lapse.
	res := t.exchange(ctx, tg, tg.expires, tg.gate, r.on >= 0 && r.on == r.cur)
	if res.err != nil && res.kind != kStopped {
		span.RecordError(res.err)
		span.SetStatus(codes.Error, res.err.Error())
	}
	if res.kind == kRegistered {
		span.SetAttributes(attribute.Int64("sip.expires", int64(res.granted/time.Second)))
	}
	span.End()
	return res
}

// exchange sends REGISTERs to tg until a final outcome: it answers
// challenges (once per fresh challenge, again for stale=true), 423 and 3xx.
// expires 0 unregisters. Each transaction is admitted by gate (unless nil)
// and its outcome reported to it: the gate paces REGISTERs, which is what a
// registrar's capacity counts, so an attempt that needs a challenge round
// trip takes two admissions.
func (t *Trunk) exchange(ctx context.Context, tg *regTarget, expires time.Duration, gate *backoff.Gate, refresh bool) result {
	var (
		challenges, redirects, n423 int
		fresh                       bool // credentials computed from a challenge of this exchange
		answered                    bool
	)
	for {
		if err := context.Cause(ctx); err != nil {
			return result{kind: kStopped, err: err, answered: answered}
		}
		var permit *backoff.Permit
		if gate != nil {
			p, err := t.admit(ctx, gate, refresh)
			if err != nil {
				if ctx.Err() == nil && errors.Is(err, ErrFlowDead) {
					// The binding's flow died while the refresh waited:
					// the trunk is not registered any more.
					return t.failure(ctx, tg, err, answered)
				}
				return result{kind: kStopped, err: err, answered: answered}
			}
			permit = p
		}
		res, next, done := t.step(ctx, tg, &expires, &challenges, &redirects, &n423, &fresh)
		answered = answered || res.answered
		permit.Done(next)
		if done {
			res.answered = answered
			return res
		}
	}
}

// admit waits for the gate's permit. A refresh waits with priority, and its
// wait ends with ErrFlowDead if the flow holding the binding dies meanwhile.
func (t *Trunk) admit(ctx context.Context, gate *backoff.Gate, refresh bool) (*backoff.Permit, error) {
	if !refresh {
		return gate.Acquire(ctx)
	}
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	t.mu.Lock()
	if t.flowErr != nil {
		err := t.flowErr
		t.mu.Unlock()
		return nil, &flowError{cause: err}
	}
	t.acqCancel = cancel
	t.mu.Unlock()
	p, err := gate.AcquirePriority(actx)
	t.mu.Lock()
	t.acqCancel = nil
	t.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		if p != nil {
			p.Abandon()
		}
		return nil, context.Cause(actx)
	}
	return p, err
}

// step sends one REGISTER of an exchange and classifies its answer: the
// final result (done), or a follow-up to send; and the outcome to report to
// the gate for this transaction.
func (t *Trunk) step(ctx context.Context, tg *regTarget, expires *time.Duration,
	challenges, redirects, n423 *int, fresh *bool) (res result, o backoff.Outcome, done bool) {
	req, contact, network, err := t.newRegister(ctx, tg, *expires)
	if err != nil {
		r := t.failure(ctx, tg, err, false)
		return r, r.outcome(), true
	}
	sentCreds := tg.auth.chal != nil
	resp, f, err := t.transact(ctx, tg, req, network, true)
	if err != nil {
		t.endPending(f, false)
		r := t.failure(ctx, tg, err, false)
		return r, r.outcome(), true
	}
	code := resp.StatusCode
	serr := &StatusError{Code: code, Reason: resp.Reason, Registrar: tg.raw}
	if h := resp.GetHeader("Retry-After"); h != nil {
		serr.RetryAfter, _ = parseRetryAfter(h.Value())
	}
	if code < 200 || code >= 300 || *expires == 0 {
		t.endPending(f, false)
	}
	final := func(r result) (result, backoff.Outcome, bool) {
		r.answered = true
		return r, r.outcome(), true
	}
	switch {
	case code >= 200 && code < 300:
		if *expires == 0 {
			tg.bound = nil
			return final(result{kind: kRegistered})
		}
		if h := resp.GetHeader("Flow-Timer"); h != nil {
			if ft, ok := parseFlowTimer(h.Value()); ok {
				tg.flowTimer = ft
			}
		}
		g := grantedExpiry(resp, contact, *expires)
		if g <= 0 {
			t.endPending(f, false)
			return final(result{kind: kServerError,
				err: fmt.Errorf("%w: 200 OK removed the binding", ErrBadResponse)})
		}
		tg.grant = g
		tg.bound = contact
		t.endPending(f, true)
		if f != nil {
			f.add(t, t.pref(tg)) // a Flow-Timer may shorten the interval
		}
		return final(result{kind: kRegistered, granted: g})

	case code == 401 || code == 407:
		chal, proxy := pickChallenge(resp)
		if chal == nil {
			tg.auth.reset()
			return final(result{kind: kRejected,
				err: fmt.Errorf("%w: no usable challenge: %w", ErrBadResponse, serr)})
		}
		if (sentCreds && *fresh && !chal.Stale) || *challenges >= maxChallenges {
			tg.auth.reset()
			return final(result{kind: kRejected,
				err: fmt.Errorf("%w: %w", ErrCredentialsRejected, serr)})
		}
		tg.auth.set(chal, proxy)
		*fresh = true
		*challenges++
		return result{answered: true}, backoff.Success, false

	case code == 423:
		*n423++
		next := min(2**expires, MaxExpires)
		if h := resp.GetHeader("Min-Expires"); h != nil {
			if me, ok := parseExpires(h.Value()); ok && me > *expires {
				next = me
			}
		}
		if next <= *expires || *n423 > max423 {
			return final(result{kind: kRejected,
				err: fmt.Errorf("%w: 423 without a usable Min-Expires: %w", ErrBadResponse, serr)})
		}
		t.log.LogAttrs(ctx, slog.LevelDebug, "sip interval too brief",
			slog.String("registrar", tg.raw), slog.Duration("expires", next))
		*expires = next
		tg.expires = next
		return result{answered: true}, backoff.ClientFailure, false

	case code >= 300 && code < 400:
		*redirects++
		c := resp.Contact()
		if c == nil || *redirects > maxRedirects {
			tg.redirect = nil
			e := ErrTooManyRedirects
			if c == nil {
				e = ErrBadResponse
			}
			return final(result{kind: kServerError, err: fmt.Errorf("%w: %w", e, serr)})
		}
		u := c.Address.Clone()
		u.User, u.Password, u.Headers = "", "", nil
		tg.redirect = u
		return result{answered: true}, backoff.Success, false

	case code == 408:
		return final(result{kind: kUnreachable, err: serr})
	case code == 503:
		return final(result{kind: kOverload, err: serr, retryAfter: serr.RetryAfter})
	case code >= 500 && code < 600:
		return final(result{kind: kServerError, err: serr})
	}
	return final(result{kind: kRejected, err: serr}) // 4xx, 6xx
}

// failure classifies an error that left no response.
func (t *Trunk) failure(ctx context.Context, tg *regTarget, err error, answered bool) result {
	if ctx.Err() != nil {
		return result{kind: kStopped, err: context.Cause(ctx), answered: answered}
	}
	tg.redirect = nil
	return result{kind: kUnreachable, err: err, answered: answered}
}

// transact sends one request and waits for its final response, at most
// RequestTimeout. With watch, the flow the request went out on is watched
// (and returned, still subscribed: the caller ends the watch) so that its
// death ends the wait at once.
func (t *Trunk) transact(ctx context.Context, tg *regTarget, req *sipmsg.Request, network string, watch bool) (*sipmsg.Response, *flow, error) {
	tctx, cancel := context.WithTimeout(ctx, t.cfg.RequestTimeout)
	defer cancel()
	start := time.Now()
	isReg := req.Method == sipmsg.REGISTER
	if isReg {
		t.txCount.Add(1)
	}
	tx, err := t.txl.Request(tctx, req)
	if err != nil {
		return nil, nil, t.txError(ctx, tctx, tg, err, isReg)
	}
	defer tx.Terminate()
	var f *flow
	if watch {
		f = t.watchPending(tx.Connection(), network, tg)
	}
	wake := t.wake
	for {
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			if isReg {
				t.inst.duration.Record(ctx, time.Since(start).Seconds(), tg.attrs.server)
				if c := res.StatusCode / 100; c >= 1 && c <= 6 {
					t.inst.responses.Add(ctx, 1, tg.attrs.class[c-1])
				}
				if t.log.Enabled(ctx, slog.LevelDebug) {
					t.log.LogAttrs(ctx, slog.LevelDebug, "sip response",
						slog.String("registrar", tg.raw), slog.Int("status", res.StatusCode),
						slog.Uint64("cseq", uint64(req.CSeq().SeqNo)))
				}
			}
			return res, f, nil
		case <-tx.Done():
			err := tx.Err()
			if f != nil {
				// sipgo fails the transaction when relink closes a dead
				// flow: report the flow's death, not the close.
				if ferr := f.deadErr(); ferr != nil {
					err = ferr
				}
			}
			return nil, f, t.txError(ctx, tctx, tg, err, isReg)
		case <-tctx.Done():
			return nil, f, t.txError(ctx, tctx, tg, tctx.Err(), isReg)
		case <-wake:
			t.mu.Lock()
			perr, ferr := t.pendErr, t.flowErr
			t.pendErr = nil
			t.mu.Unlock()
			if perr != nil {
				return nil, f, t.txError(ctx, tctx, tg, perr, isReg)
			}
			if ferr != nil {
				// The binding's flow died, not this one: Run's loop will
				// see flowErr; stop listening so as not to spin.
				wake = nil
			}
		}
	}
}

func (t *Trunk) txError(ctx, tctx context.Context, tg *regTarget, err error, isReg bool) error {
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case tctx.Err() != nil || errors.Is(err, sipmsg.ErrTransactionTimeout):
		err = &timeoutError{err: ErrTimeout}
		if isReg {
			t.inst.responses.Add(ctx, 1, tg.attrs.class[classTimeout])
		}
	default:
		if isReg {
			t.inst.responses.Add(ctx, 1, tg.attrs.class[classTransport])
		}
	}
	if isReg {
		t.log.LogAttrs(ctx, slog.LevelDebug, "sip request failed",
			slog.String("registrar", tg.raw), slog.String("error", err.Error()))
	}
	return err
}

// requestURI is the URI REGISTERs to tg go to: the 3xx target if any.
func (tg *regTarget) requestURI() (sipmsg.Uri, string) {
	if tg.redirect != nil {
		u := *tg.redirect
		return u, transportOf(&u)
	}
	return tg.uri, tg.transport
}

func (tg *regTarget) lastGrant() time.Duration {
	if tg.grant > 0 {
		return tg.grant
	}
	return tg.expires
}

func transportOf(u *sipmsg.Uri) string {
	tp := "udp"
	if v, ok := u.UriParams.Get("transport"); ok && v != "" {
		tp = strings.ToLower(v)
	}
	if u.Scheme == "sips" && tp == "tcp" || u.Scheme == "sips" && tp == "udp" {
		tp = "tls"
	}
	return tp
}

// newRegister builds the next REGISTER to tg (CSeq counting up, same
// Call-ID), with credentials if a challenge is kept, and returns the Contact
// it registers and the transport it goes over.
func (t *Trunk) newRegister(ctx context.Context, tg *regTarget, expires time.Duration) (*sipmsg.Request, *sipmsg.Uri, string, error) {
	ruri, network := tg.requestURI()
	req := sipmsg.NewRequest(sipmsg.REGISTER, ruri)
	upper := sipmsg.NetworkToUpper(network)
	req.SetTransport(upper)
	via := &sipmsg.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: upper,
		Params: sipmsg.NewParams()}
	via.Params.Add("branch", sipmsg.GenerateBranch())
	req.AppendHeader(via)
	from := &sipmsg.FromHeader{Address: t.cfg.aor, Params: sipmsg.NewParams()}
	from.Params.Add("tag", tg.fromTag)
	req.AppendHeader(from)
	req.AppendHeader(&sipmsg.ToHeader{Address: t.cfg.aor})
	callID := sipmsg.CallIDHeader(tg.callID)
	req.AppendHeader(&callID)
	tg.cseq++
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: tg.cseq, MethodName: sipmsg.REGISTER})
	mf := sipmsg.MaxForwardsHeader(70)
	req.AppendHeader(&mf)

	contact, err := t.contactFor(ctx, tg, req, network)
	if err != nil {
		return nil, nil, network, err
	}
	ch := &sipmsg.ContactHeader{Address: *contact}
	if expires == 0 {
		ch.Params = sipmsg.NewParams()
		ch.Params.Add("expires", "0")
	}
	req.AppendHeader(ch)
	if tg.bound != nil && !sameContact(tg.bound, contact) {
		// A new connection means a new default Contact: remove the binding
		// of the old one in the same request, rather than leave it to
		// expire (the registrar would route calls to a dead flow).
		old := &sipmsg.ContactHeader{Address: *tg.bound, Params: sipmsg.NewParams()}
		old.Params.Add("expires", "0")
		req.AppendHeader(old)
	}
	exp := sipmsg.ExpiresHeader(uint32(expires / time.Second))
	req.AppendHeader(&exp)
	if h := tg.auth.header("REGISTER", ruri.String(), t.cfg.username, t.cfg.Password); h != nil {
		req.AppendHeader(h)
	}
	req.SetBody(nil)
	return req, contact, network, nil
}

// contactFor returns the Contact to register: the configured one, or one
// built from the local address of the connection the request will use.
func (t *Trunk) contactFor(ctx context.Context, tg *regTarget, req *sipmsg.Request, network string) (*sipmsg.Uri, error) {
	if t.cfg.contact != nil {
		return t.cfg.contact, nil
	}
	tctx, cancel := context.WithTimeout(ctx, t.cfg.RequestTimeout)
	defer cancel()
	c, err := t.tp.ClientRequestConnection(tctx, req)
	if err != nil {
		return nil, err
	}
	la := c.LocalAddr()
	c.TryClose() // ClientRequestConnection took a reference
	host, port, err := net.SplitHostPort(la.String())
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		// An unconnected UDP socket: ask the routing table which address
		// reaches the registrar (no packet is sent).
		if tg.localIP == nil {
			if uc, err := net.Dial("udp", req.Destination()); err == nil {
				if a, ok := uc.LocalAddr().(*net.UDPAddr); ok {
					tg.localIP = a.IP
				}
				uc.Close()
			}
		}
		if tg.localIP != nil {
			host = tg.localIP.String()
		}
	}
	p, _ := strconv.Atoi(port)
	u := &sipmsg.Uri{Scheme: "sip", User: t.cfg.aor.User, Host: host, Port: p}
	if network != "udp" {
		u.UriParams = sipmsg.HeaderParams{{K: "transport", V: network}}
	}
	return u, nil
}

// grantedExpiry returns the binding lifetime a 2xx grants: the expires
// parameter of our Contact (or of the only Contact), else the Expires
// header, else what was asked.
func grantedExpiry(res *sipmsg.Response, ours *sipmsg.Uri, asked time.Duration) time.Duration {
	contacts := res.GetHeaders("Contact")
	var only *sipmsg.ContactHeader
	for _, h := range contacts {
		c, ok := h.(*sipmsg.ContactHeader)
		if !ok {
			continue
		}
		if only == nil {
			only = c
		}
		if sameContact(&c.Address, ours) {
			if v, ok := c.Params.Get("expires"); ok {
				if d, ok := parseContactExpires(v); ok {
					return d
				}
			}
			only = nil // matched, no usable parameter: use Expires
			contacts = nil
			break
		}
	}
	if len(contacts) == 1 && only != nil {
		if v, ok := only.Params.Get("expires"); ok {
			if d, ok := parseContactExpires(v); ok {
				return d
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if d, ok := parseExpires(h.Value()); ok {
			return d
		}
	}
	return asked
}

// sameContact compares the parts of two Contact URIs a registrar keys
// bindings by: scheme, user, host (case-insensitive) and port.
func sameContact(a, b *sipmsg.Uri) bool {
	if a == nil || b == nil {
		return false
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && a.User == b.User &&
		strings.EqualFold(a.Host, b.Host) && a.Port == b.Port
}

// qualify sends an OPTIONS to tg and waits for any answer.
func (t *Trunk) qualify(ctx context.Context, tg *regTarget) error {
	ruri, network := tg.requestURI()
	req := newOptions(ruri, t.mon.hostname, network)
	_, _, err := t.transact(ctx, tg, req, network, false)
	return err
}
