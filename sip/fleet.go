package sip

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
)

// ErrNotInFleet is returned by Fleet.Remove for a trunk the fleet does not
// hold.
var ErrNotInFleet = errors.New("sip: trunk not in fleet")

// FleetConfig configures a Fleet. The zero value is usable.
type FleetConfig struct {
	// Gate is the template of the Gate the fleet makes for each registrar
	// address (transport, host and port) its trunks use; its Destination
	// is set to that address. The zero value is an adaptive gate that
	// learns the rate the registrar accepts (see backoff.Gate). Set Rate
	// if you know the registrar's capacity. A zero MaxPushBack means
	// MaxRetryAfter (5 min) here, not the gate's own 1 h default: a
	// registrar's pause should not outlast the bindings it holds.
	Gate backoff.GateConfig
	// Logger, MeterProvider and TracerProvider are used by trunks whose
	// TrunkConfig leaves them nil, and by the gates (Logger and
	// MeterProvider) when the Gate template leaves them nil. nil Logger
	// discards; nil providers mean the otel globals.
	Logger         *slog.Logger
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider
	// OnStateChange, if set, is called after every state change of every
	// trunk (after the trunk's own OnStateChange), from the trunk's
	// goroutine, outside locks. It must not block.
	OnStateChange func(TrunkStateChange)
}

// FleetStats counts a fleet's trunks by state.
type FleetStats struct {
	Trunks                                                 int
	Unregistered, Registering, Registered, Backoff, Failed int
}

// Count returns the number of trunks in state s.
func (s FleetStats) Count(st TrunkState) int {
	switch st {
	case Unregistered:
		return s.Unregistered
	case Registering:
		return s.Registering
	case Registered:
		return s.Registered
	case Backoff:
		return s.Backoff
	case Failed:
		return s.Failed
	}
	return 0
}

// Fleet runs many trunks on one UA. Trunks that register with
// the same registrar address share one backoff.Gate, so that when a flow
// dies (and with it every registration on it) or a registrar comes back,
// the trunks recover at the pace the registrar can serve, and one 503
// Retry-After pauses them all. They also share the UserAgent's flows: one
// connection and one keepalive per registrar address. Its methods are safe
// for concurrent use.
type Fleet struct {
	ua   *UA
	cfg  FleetConfig
	inst *instruments

	counts [numStates]atomic.Int64

	mu      sync.Mutex
	gates   map[string]*backoff.Gate // made by the fleet, one per registrar address
	users   map[string]int           // members using each gate
	ran     bool                     // a Run returned: its gates are closed
	members map[*Trunk]*member
	// launch starts a trunk under the context of the running Run; nil when
	// the fleet is not running.
	launch func(*Trunk, *member)
	wg     sync.WaitGroup
}

type member struct {
	cancel context.CancelFunc
	done   chan struct{}
	keys   map[string]bool // the gates the trunk asked for; guarded by Fleet.mu
}

// NewFleet returns an empty Fleet on ua (see NewUA).
func NewFleet(ua *UA, cfg FleetConfig) *Fleet {
	return &Fleet{
		ua:      ua,
		cfg:     cfg,
		inst:    newInstruments(cfg.MeterProvider, cfg.TracerProvider),
		gates:   make(map[string]*backoff.Gate),
		users:   make(map[string]int),
		members: make(map[*Trunk]*member),
	}
}

// gateFor returns the gate of a registrar address for m's trunk, making it
// on first use.
func (f *Fleet) gateFor(m *member, key string) *backoff.Gate {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !m.keys[key] {
		m.keys[key] = true
		f.users[key]++
	}
	if g := f.gates[key]; g != nil {
		return g
	}
	gc := f.cfg.Gate
	gc.Destination = key
	if gc.MaxPushBack == 0 {
		gc.MaxPushBack = MaxRetryAfter
	}
	if gc.MeterProvider == nil {
		gc.MeterProvider = f.cfg.MeterProvider
	}
	if gc.Logger == nil {
		gc.Logger = f.cfg.Logger
	}
	g := backoff.NewGate(gc)
	f.gates[key] = g
	return g
}

// Gate returns the gate the fleet uses for a registrar URI, or nil if no
// trunk of the fleet uses its address. A registrar given by name (RFC 3263)
// has a gate per address its lookup found: pass the target a trunk uses
// (TrunkStateChange.Destination, Trunk.Registrar).
func (f *Fleet) Gate(registrar string) *backoff.Gate {
	t, err := parseTarget(registrar)
	if err != nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gates[t.key]
}

// GateStats returns a snapshot of each registrar gate's stats, keyed by the
// gate's destination ("tcp/host:port").
func (f *Fleet) GateStats() map[string]backoff.GateStats {
	f.mu.Lock()
	gates := make(map[string]*backoff.Gate, len(f.gates))
	for k, g := range f.gates {
		gates[k] = g
	}
	f.mu.Unlock()
	out := make(map[string]backoff.GateStats, len(gates))
	for k, g := range gates {
		out[k] = g.Stats()
	}
	return out
}

// Add creates a trunk from cfg (as NewTrunk does) and adds it to the fleet;
// if the fleet is running, the trunk starts at once. cfg.Gate must be nil:
// the fleet assigns gates.
func (f *Fleet) Add(cfg TrunkConfig) (*Trunk, error) {
	if cfg.Gate != nil {
		return nil, configErr("a Fleet trunk takes the fleet's gates; leave Gate nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = f.cfg.Logger
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = f.cfg.MeterProvider
	}
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = f.cfg.TracerProvider
	}
	if fo := f.cfg.OnStateChange; fo != nil {
		if own := cfg.OnStateChange; own != nil {
			cfg.OnStateChange = func(sc TrunkStateChange) { own(sc); fo(sc) }
		} else {
			cfg.OnStateChange = fo
		}
	}
	m := &member{keys: make(map[string]bool)}
	t, err := newTrunk(f.ua, cfg, f.inst, func(key string) *backoff.Gate { return f.gateFor(m, key) })
	if err != nil {
		return nil, err // before asking for any gate
	}
	t.onState = f.count
	f.counts[t.State()].Add(1)
	f.mu.Lock()
	f.members[t] = m
	if f.launch != nil {
		f.launch(t, m)
	}
	f.mu.Unlock()
	return t, nil
}

func (f *Fleet) count(from, to TrunkState) {
	f.counts[from].Add(-1)
	f.counts[to].Add(1)
}

// Remove stops t (it unregisters, within its UnregisterTimeout) and removes
// it from the fleet, closing the gates no other trunk of the fleet uses
// (see Run). It returns ErrNotInFleet if t is not in the fleet.
func (f *Fleet) Remove(t *Trunk) error {
	f.mu.Lock()
	m, ok := f.members[t]
	delete(f.members, t)
	var cancel context.CancelFunc
	var done chan struct{}
	if ok {
		cancel, done = m.cancel, m.done
	}
	f.mu.Unlock()
	if !ok {
		return ErrNotInFleet
	}
	if cancel != nil {
		cancel()
		<-done
	}
	f.counts[t.State()].Add(-1)
	f.release(m)
	return nil
}

// release drops m's use of its gates, and closes those nobody uses any
// more (a fleetgate member leaves its fleet at once).
func (f *Fleet) release(m *member) {
	var unused []*backoff.Gate
	f.mu.Lock()
	for key := range m.keys {
		f.users[key]--
		if f.users[key] > 0 {
			continue
		}
		delete(f.users, key)
		if g := f.gates[key]; g != nil {
			unused = append(unused, g)
			delete(f.gates, key)
		}
	}
	m.keys = nil
	f.mu.Unlock()
	// Remove and Add take no context; each Close is bounded (a fleet's
	// Leave by backoff.FleetCallBound).
	closeGates(context.Background(), unused, f.cfg.Logger) //nolint:contextcheck // see above
}

// closeGates closes gates the fleet made; a fleet member that could not
// leave lapses by its own TTL, which is logged.
func closeGates(ctx context.Context, gates []*backoff.Gate, log *slog.Logger) {
	for _, g := range gates {
		if err := g.Close(); err != nil && log != nil {
			log.LogAttrs(ctx, slog.LevelWarn, "sip fleet gate close",
				slog.String("error", err.Error()))
		}
	}
}

// Trunks returns the fleet's trunks, in no particular order.
func (f *Fleet) Trunks() []*Trunk {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*Trunk, 0, len(f.members))
	for t := range f.members {
		out = append(out, t)
	}
	return out
}

// Stats counts the fleet's trunks by state. It is O(1).
func (f *Fleet) Stats() FleetStats {
	var s FleetStats
	c := func(st TrunkState) int { return int(f.counts[st].Load()) }
	s.Unregistered, s.Registering, s.Registered = c(Unregistered), c(Registering), c(Registered)
	s.Backoff, s.Failed = c(Backoff), c(Failed)
	s.Trunks = s.Unregistered + s.Registering + s.Registered + s.Backoff + s.Failed
	return s
}

// Run runs every trunk of the fleet, and those added later, until ctx ends;
// then every trunk unregisters (in parallel, through the registrar's gate,
// each within its UnregisterTimeout), Run closes the gates the fleet made
// (a fleet-backed gate leaves its backoff.Fleet at once: see
// backoff.Gate.Close) and returns context.Cause(ctx). Their Stats stay
// readable (Gate, GateStats) until the next Run, which makes new ones. It
// returns ErrRunning if the fleet is already running.
func (f *Fleet) Run(ctx context.Context) error {
	f.mu.Lock()
	if f.launch != nil {
		f.mu.Unlock()
		return ErrRunning
	}
	if f.ran {
		// The last Run closed its gates: the trunks take new ones as
		// they start (Trunk.Run asks for its gates again).
		f.ran = false
		clear(f.gates)
	}
	// launch captures ctx for Add; it is cleared before Run returns, so
	// the context does not outlive Run.
	f.launch = func(t *Trunk, m *member) {
		tctx, cancel := context.WithCancel(ctx)
		m.cancel, m.done = cancel, make(chan struct{})
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer close(m.done)
			defer cancel()
			_ = t.Run(tctx)
		}()
	}
	for t, m := range f.members {
		f.launch(t, m)
	}
	f.mu.Unlock()

	<-ctx.Done()

	f.mu.Lock()
	f.launch = nil
	f.mu.Unlock()
	f.wg.Wait()
	f.mu.Lock()
	for _, m := range f.members {
		m.cancel, m.done = nil, nil
	}
	f.ran = true
	made := make([]*backoff.Gate, 0, len(f.gates))
	for _, g := range f.gates {
		made = append(made, g)
	}
	f.mu.Unlock()
	closeGates(context.WithoutCancel(ctx), made, f.cfg.Logger)
	return context.Cause(ctx)
}
