package sip

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/statebox"
)

// ErrRunning is returned by Run when the Trunk is already running.
var ErrRunning = errors.New("sip: trunk already running")

// Trunk keeps one registration alive with a registrar: it registers,
// refreshes before expiry, watches the flow it registered over, and
// re-registers (through the registrar's Gate) when the flow dies or a refresh
// fails. Create it with NewTrunk and drive it with Run. Its methods are safe
// for concurrent use.
type Trunk struct {
	cfg     *resolved
	request requestFunc // sipgo's transaction layer; a double in tests
	tp      *sipmsg.TransportLayer
	mon     *flowMonitor
	inst    *instruments
	log     *slog.Logger
	tgts    []*regTarget          // the targets in order: conf, each looked-up name replaced by what it resolves to
	conf    []*regTarget          // one per configured registrar
	known   map[string]*regTarget // targets found by lookups, by key; Run's goroutine only
	gateFor func(key string) *backoff.Gate
	// own holds the gates the trunk made itself (no TrunkConfig.Gate, no
	// Fleet), by key; Run's exit closes them. Guarded by ownMu.
	ownMu sync.Mutex
	own   map[string]*backoff.Gate
	// lookup resolves a registrar given by name (RFC 3263): lookupTargets
	// with TrunkConfig.Resolver; nil (tests in a synctest bubble) skips it.
	lookup func(ctx context.Context, tg target) ([]target, error)

	box     statebox.Box[TrunkState]
	running atomic.Bool
	deaths  deathQueue // deaths of the flows the trunk uses, for the runner
	// onState is set by a Fleet before Run; called with every change.
	onState func(from, to TrunkState)

	txCount atomic.Uint64 // REGISTER transactions sent

	instance string                  // the UA's RFC 5626 +sip.instance
	contacts map[string]*sipmsg.Uri  // by transport: the Contact kept (outbound); Run's goroutine only
	udpAddrs map[string]string       // UDP destinations resolved (udpRemote); Run's goroutine only
	binding  atomic.Pointer[Binding] // the binding held, nil if none

	mu      sync.Mutex
	current string // guarded by mu
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
	// held is when a binding this trunk may hold at the registrar ends at
	// the latest: a REGISTER may have bound unless refused (a 2xx sets
	// the grant, a refusal leaves the binding as it was, no answer extends
	// it); an answered unregistration clears it (zero). Run's exit unregisters
	// from every registrar whose held is still ahead.
	held     time.Time
	localIP  net.IP   // cached outbound address for UDP Contacts
	index    int      // of the configured registrar it comes from: reg-id = RegID + index
	path     []string // Path of the last 200 OK
	svcRoute []string // Service-Route of the last 200 OK
	obOK     bool     // the last 200 OK said Require: outbound
}

// NewTrunk returns a Trunk that registers cfg.AOR on ua (see NewUA and
// WrapUA). It validates cfg (errors wrap ErrInvalidConfig) and does no I/O.
// NewTrunk never calls sipgo's global setters.
func NewTrunk(ua *UA, cfg TrunkConfig) (*Trunk, error) {
	return newTrunk(ua, cfg, nil, nil)
}

// newTrunk is NewTrunk with a Fleet's shared instruments and gates.
func newTrunk(ua *UA, cfg TrunkConfig, inst *instruments, gateFor func(key string) *backoff.Gate) (*Trunk, error) {
	if ua == nil {
		return nil, configErr("nil UA")
	}
	rc, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if inst == nil {
		inst = newInstruments(rc.MeterProvider, rc.TracerProvider)
	}
	txl := ua.ua.TransactionLayer()
	t := &Trunk{
		cfg: rc,
		request: func(ctx context.Context, req *sipmsg.Request) (clientTx, error) {
			// The connection first, through relink: each connect attempt
			// bounded by UAConfig.ConnectTimeout and the trunk's TLSConfig
			// applied; sipgo then finds it in its pool.
			c, err := ua.mon.connect(ctx, req, rc.TLSConfig)
			if err != nil {
				return nil, err
			}
			c.TryClose() // connect took a reference
			return txl.Request(ctx, req)
		},
		tp:       ua.ua.TransportLayer(),
		mon:      ua.mon,
		inst:     inst,
		deaths:   deathQueue{ready: make(chan struct{}, 1)},
		instance: ua.InstanceID(),
	}
	t.log = rc.Logger.With(slog.String("aor", rc.aor.Addr()))
	t.gateFor = func(key string) *backoff.Gate {
		switch {
		case rc.Gate != nil:
			return rc.Gate
		case gateFor != nil:
			return gateFor(key)
		}
		return t.ownGate(key)
	}
	t.known = make(map[string]*regTarget)
	t.lookup = func(ctx context.Context, tg target) ([]target, error) {
		return lookupTargets(ctx, rc.Resolver, tg)
	}
	for i, tg := range rc.targets {
		t.conf = append(t.conf, t.newRegTarget(tg, i))
	}
	t.tgts = t.conf
	t.current = t.tgts[0].raw
	return t, nil
}

// newRegTarget makes the state of one target: the i-th configured
// registrar, or one of the addresses its lookup found. A registrar given by
// name gets its gate only if it is used as such (its lookup failed): the
// addresses it resolves to have theirs.
func (t *Trunk) newRegTarget(tg target, i int) *regTarget {
	rt := &regTarget{target: tg, expires: t.cfg.Expires, index: i,
		attrs:   newTargetAttrs(strings.TrimPrefix(tg.key, tg.transport+"/"), tg.transport),
		callID:  rand.Text(),
		fromTag: rand.Text()[:16],
	}
	if !needsLookup(&tg) {
		rt.gate = t.gateFor(tg.key)
	}
	return rt
}

// ownGate returns the trunk's own gate for a registrar address, making it
// on first use.
func (t *Trunk) ownGate(key string) *backoff.Gate {
	t.ownMu.Lock()
	defer t.ownMu.Unlock()
	if g := t.own[key]; g != nil {
		return g
	}
	g := backoff.NewGate(backoff.GateConfig{Destination: key,
		MeterProvider: t.cfg.MeterProvider, MaxPushBack: MaxRetryAfter})
	if t.own == nil {
		t.own = make(map[string]*backoff.Gate)
	}
	t.own[key] = g
	return g
}

// takeGates asks again for the gate of every target that has one, as Run
// starts: the last Run closed the gates the trunk made, a Fleet's Run those
// it made.
func (t *Trunk) takeGates() {
	for _, tg := range t.everyTarget() {
		if tg.gate != nil {
			tg.gate = t.gateFor(tg.key)
		}
	}
}

// closeOwnGates closes the gates the trunk made, as Run returns.
func (t *Trunk) closeOwnGates() {
	t.ownMu.Lock()
	own := t.own
	t.own = nil
	t.ownMu.Unlock()
	for _, g := range own {
		_ = g.Close() // no Fleet: Close cannot fail
	}
}

// everyTarget returns every target the trunk may hold a binding at: the
// configured ones and those lookups found.
func (t *Trunk) everyTarget() []*regTarget {
	all := append([]*regTarget(nil), t.conf...)
	for _, rt := range t.known {
		all = append(all, rt)
	}
	return all
}

// State returns the trunk's current state.
func (t *Trunk) State() TrunkState { return t.box.Get() }

// WaitForStateChange blocks until the state differs from from, and reports
// true; or until ctx ends, and reports false.
func (t *Trunk) WaitForStateChange(ctx context.Context, from TrunkState) bool {
	return t.box.Wait(ctx, from)
}

// AOR returns the address-of-record the trunk registers.
func (t *Trunk) AOR() string { return t.cfg.AOR }

// Registrar returns the URI of the registrar the trunk uses now (for a
// registrar looked up by name, the target: see TrunkStateChange.Destination).
func (t *Trunk) Registrar() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current
}

// Transactions returns the number of REGISTER transactions the trunk has
// sent (each challenge answer and each retry counts).
func (t *Trunk) Transactions() uint64 { return t.txCount.Load() }

func (t *Trunk) setState(ctx context.Context, to TrunkState, tg *regTarget, err error, expires time.Duration) {
	if to != Registered {
		t.binding.Store(nil) // before anyone waiting on the state wakes
	}
	// The counts (a Fleet's, the registrations-by-state instrument)
	// change with the state, before anyone waiting on it wakes.
	from, changed := t.box.Set(to, func(from, to TrunkState) {
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
		t.cfg.OnStateChange(TrunkStateChange{Destination: reg, From: from, To: to, Err: err,
			At: time.Now(), Trunk: t, Expires: expires})
	}
}

// flowDead implements flowSub: a flow the trunk uses died. The runner
// hears of it as an event.
func (t *Trunk) flowDead(f *flow, err error) {
	t.deaths.push(flowDeath{f: f, err: err})
}

func (t *Trunk) pref(tg *regTarget) flowPref {
	p := flowPref{interval: t.cfg.keepAlive, timeout: t.cfg.kaTimeout}
	if tg.flowTimer > 0 && tg.flowTimer < p.interval {
		p.interval = tg.flowTimer
	}
	return p
}

func (t *Trunk) setCurrent(tg *regTarget) {
	t.mu.Lock()
	t.current = tg.raw
	t.mu.Unlock()
}

// Run registers and keeps the registration alive until ctx ends; then it
// removes the binding (Expires: 0, bounded by UnregisterTimeout), closes the
// gates the trunk made itself (none with TrunkConfig.Gate or in a Fleet)
// and returns context.Cause(ctx). It returns ErrRunning if the trunk is already running.
// A Trunk may be Run again after Run returned.
func (t *Trunk) Run(ctx context.Context) error {
	if !t.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer t.running.Store(false)
	t.inst.registrations.Add(ctx, 1, stateOpts[t.State()])
	t.takeGates()
	defer t.closeOwnGates()
	r := &runner{t: t, bo: t.cfg.Backoff(), on: -1}
	r.loop(ctx)
	if r.timer != nil {
		r.timer.Stop()
	}
	r.shutdown(ctx)
	t.inst.registrations.Add(context.WithoutCancel(ctx), -1, stateOpts[t.State()])
	return context.Cause(ctx)
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
	switch {
	case tg.grant > 0:
		return tg.grant
	case tg.expires > 0:
		return tg.expires
	}
	return DefaultExpires
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
