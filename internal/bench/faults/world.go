package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/sip"
)

const password = "secret"

// regSlot is one registrar, restartable on the same address.
type regSlot struct {
	cfg   registrar.Config
	r     *registrar.Registrar
	proxy *faultproxy.Proxy
	// kam, when set, is a Kamailio registrar used instead of r (with
	// kamURI the trunks' URI of it, proxy nil unless in front of it).
	kam    *kamailio.Instance
	kamURI string
	// Counters of the registrars this slot closed (restarts).
	past503, pastRegisters uint64
}

// uri is the trunks' URI of the registrar: its proxy's address.
func (s *regSlot) uri() string {
	if s.kamURI != "" {
		return s.kamURI
	}
	return "sip:" + s.proxy.Addr() + ";transport=tcp"
}

func (s *regSlot) counts() (n503, registers uint64) {
	if s.kam != nil {
		st, err := s.kam.Stats()
		if err != nil {
			return 0, 0
		}
		return uint64(st.Overload + st.Shed), uint64(st.Registers)
	}
	st := s.r.Stats()
	return s.past503 + st.ByStatus[503], s.pastRegisters + st.Registers
}

// restart stops the registrar and starts a new one on the same address after
// down: bindings, nonces and their secret are lost. cfg, when non-nil,
// changes its configuration.
func (s *regSlot) restart(ctx context.Context, down time.Duration, cfg func(*registrar.Config)) error {
	n503, regs := s.counts()
	s.past503, s.pastRegisters = n503, regs
	s.cfg.Addr = s.r.Addr()
	_ = s.r.Close()
	if err := sleep(ctx, down); err != nil {
		return err
	}
	if cfg != nil {
		cfg(&s.cfg)
	}
	r, err := registrar.New(s.cfg) //nolint:contextcheck // registrar.New takes no ctx: it lives until its Close
	if err != nil {
		return fmt.Errorf("restart registrar: %w", err)
	}
	s.r = r
	return nil
}

// world is what one row runs: registrars behind fault proxies with a Fleet,
// and Links to an echo server behind a proxy, plus what was observed.
type world struct {
	o      *options
	regs   []*regSlot
	ua     *sip.UA
	fleet  *sip.Fleet
	trunks []*sip.Trunk
	aors   []string
	stopF  context.CancelFunc
	doneF  chan error
	links  *linkSet

	mu         sync.Mutex
	cut        time.Time
	restored   time.Time
	stopping   time.Time
	bound      time.Duration // detection bound; 0: the row has none
	detect     bool          // the row's fault must be noticed
	fineAfter  time.Duration // after the restore, deaths count as false past this
	deaths     []time.Time
	trunkLost  map[*sip.Trunk]time.Time
	trunkBack  map[*sip.Trunk]time.Time
	at503, atR uint64
	stopTook   time.Duration // from the fleet's stop to its Run's return
	stop503    uint64        // 503s the registrars answered during the stop

	recovered  int
	recoverAt  time.Time
	stale      int
	orphans    int
	stuck      int
	capacity   float64
	note       string
	recoveredF func() int // overrides the default recovery check
	// byPoll: recover_s is when the poll saw every unit recovered (the
	// recovery changes no state, as a failback does not).
	byPoll bool
	// env overrides the row's environment ("embedded").
	env string
	// cleanup runs at close, last first (network namespaces...).
	cleanup []func()
}

func newWorld(o *options) *world {
	return &world{o: o, trunkLost: map[*sip.Trunk]time.Time{}, trunkBack: map[*sip.Trunk]time.Time{}, fineAfter: time.Second}
}

// addRegistrar starts a registrar and its proxy.
//
//nolint:contextcheck // registrar.New takes no ctx: the registrar lives until its Close
func (w *world) addRegistrar(cfg registrar.Config) (*regSlot, error) {
	cfg.DisableUDP = true
	if cfg.Password == "" && cfg.Users == nil {
		cfg.Password = password
	}
	r, err := registrar.New(cfg)
	if err != nil {
		return nil, err
	}
	p, err := faultproxy.New(r.Addr())
	if err != nil {
		_ = r.Close()
		return nil, err
	}
	s := &regSlot{cfg: cfg, r: r, proxy: p}
	w.regs = append(w.regs, s)
	return s, nil
}

// startFleet runs o.trunks trunks on one Fleet towards the registrars (in
// order), tweaked by tc and fc, and waits for all of them to register when
// wait is set.
func (w *world) startFleet(ctx context.Context, wait bool, tc func(*sip.TrunkConfig), fc func(*sip.FleetConfig)) error {
	ua, err := sip.NewUA(sip.UAConfig{OnFlowDeath: w.onFlowDeath})
	if err != nil {
		return err
	}
	w.ua = ua
	fcfg := sip.FleetConfig{Logger: w.o.logger, OnStateChange: w.onTrunk}
	if fc != nil {
		fc(&fcfg)
	}
	w.fleet = sip.NewFleet(ua, fcfg)
	var uris []string
	for _, s := range w.regs {
		uris = append(uris, s.uri())
	}
	for i := range w.o.trunks {
		c := w.trunkConfig(i, uris)
		if tc != nil {
			tc(&c)
		}
		t, err := w.fleet.Add(c)
		if err != nil {
			return err
		}
		w.trunks = append(w.trunks, t)
	}
	fctx, cancel := context.WithCancel(ctx)
	w.stopF, w.doneF = cancel, make(chan error, 1)
	go func() { w.doneF <- w.fleet.Run(fctx) }()
	if !wait {
		return nil
	}
	return waitFor(ctx, 30*time.Second, "trunks registered", func() bool {
		return w.fleet.Stats().Registered == w.o.trunks
	})
}

// trunkConfig is trunk i's configuration, its AoR recorded.
func (w *world) trunkConfig(i int, uris []string) sip.TrunkConfig {
	aor := fmt.Sprintf("sip:t%05d@relink.test", i)
	w.aors = append(w.aors, aor)
	return sip.TrunkConfig{
		Registrars: uris, AOR: aor, Password: password, Expires: 60 * time.Second,
		KeepAlive: w.o.keepAlive, KeepAliveTimeout: w.o.timeout, RequestTimeout: 5 * time.Second,
	}
}

func (w *world) onFlowDeath(d sip.FlowDeath) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping.IsZero() {
		w.deaths = append(w.deaths, d.At)
	}
}

func (w *world) onTrunk(ch sip.TrunkStateChange) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopping.IsZero() {
		return
	}
	if ch.From == sip.Registered && ch.To != sip.Registered && !w.cut.IsZero() && !ch.At.Before(w.cut) {
		if _, ok := w.trunkLost[ch.Trunk]; !ok {
			w.trunkLost[ch.Trunk] = ch.At
		}
	}
	if ch.To == sip.Registered {
		w.trunkBack[ch.Trunk] = ch.At
	}
}

// markCut records the fault's start, with the registrars' counters.
func (w *world) markCut() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cut = time.Now()
	w.at503, w.atR = w.counts()
	if w.links != nil {
		w.links.setCut(w.cut)
	}
}

// markRestore records the path's return.
func (w *world) markRestore() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.restored = time.Now()
	if w.links != nil {
		w.links.setRestore(w.restored, w.fineAfter)
	}
}

func (w *world) counts() (n503, registers uint64) {
	for _, s := range w.regs {
		a, b := s.counts()
		n503 += a
		registers += b
	}
	return n503, registers
}

// bindings counts the live bindings of aor at registrar i (-1 when
// Kamailio could not be asked).
func (w *world) bindings(i int, aor string) int {
	s := w.regs[i]
	if s.kam != nil {
		user := strings.TrimPrefix(aor, "sip:")
		user, _, _ = strings.Cut(user, "@")
		cs, err := s.kam.Contacts(user)
		if err != nil {
			return -1
		}
		return len(cs)
	}
	return len(s.r.Bindings(aor))
}

// trunkOK reports the default recovery of a trunk: registered, and its
// binding held by the first registrar.
// When the row's fault must be noticed, the trunk must also have registered
// again after it noticed.
func (w *world) trunkOK(i int, t *sip.Trunk) bool {
	if w.detect {
		w.mu.Lock()
		lost, ok := w.trunkLost[t]
		back := w.trunkBack[t]
		w.mu.Unlock()
		if !ok || back.Before(lost) {
			return false
		}
	}
	return t.State() == sip.Registered && w.bindings(0, w.aors[i]) > 0
}

// countRecovered counts the recovered trunks and Links.
func (w *world) countRecovered() int {
	n := 0
	if w.recoveredF != nil {
		n = w.recoveredF()
	} else if w.trunks != nil {
		for i, t := range w.trunks {
			if w.trunkOK(i, t) {
				n++
			}
		}
	}
	if w.links != nil {
		n += w.links.recovered(w.detect)
	}
	return n
}

// waitRecovered waits up to o.capAfter for every trunk and Link to recover,
// then watches the path for o.settle and checks for stale registrations.
func (w *world) waitRecovered(ctx context.Context) error {
	total := w.total()
	deadline := time.Now().Add(w.o.capAfter)
	for {
		n := w.countRecovered()
		w.recovered = n
		if n == total {
			w.recoverAt = time.Now()
			break
		}
		if time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	if err := sleep(ctx, w.o.settle); err != nil {
		return err
	}
	if w.trunks != nil {
		for i, t := range w.trunks {
			if t.State() == sip.Registered && !w.holdsBinding(w.aors[i]) {
				w.stale++
			}
		}
	}
	return nil
}

// holdsBinding reports whether any registrar holds a binding for aor.
func (w *world) holdsBinding(aor string) bool {
	for i := range w.regs {
		if w.bindings(i, aor) > 0 {
			return true
		}
	}
	return false
}

func (w *world) total() int {
	n := 0
	if w.trunks != nil {
		n += w.o.trunks
	}
	if w.links != nil {
		n += len(w.links.runs)
	}
	return n
}

// stop ends trunks and Links, counts the stuck and the orphan bindings.
func (w *world) stop() {
	w.mu.Lock()
	w.stopping = time.Now()
	w.mu.Unlock()
	if w.links != nil {
		w.stuck += w.links.stop()
	}
	if w.trunks == nil {
		return
	}
	if w.o.liftAtStop && w.capacity > 0 {
		w.regs[0].r.SetCapacity(0)
		w.note += "capacity lifted before the stop (-lift-at-stop); "
	}
	before, _ := w.counts()
	start := time.Now()
	w.stopF()
	t := time.NewTimer(maxStop)
	defer t.Stop()
	select {
	case err := <-w.doneF:
		if err != nil && !errors.Is(err, context.Canceled) {
			w.note += "fleet: " + err.Error() + "; "
		}
	case <-t.C:
		w.stuck += w.o.trunks
		w.note += fmt.Sprintf("fleet Run did not return %v after the stop; ", maxStop)
	}
	w.stopTook = time.Since(start)
	after, _ := w.counts()
	w.stop503 = after - before
	w.countOrphans()
}

// maxStop is how long a fleet's stop may take: sip's cap on a trunk's
// unregistration (12 × UnregisterTimeout, 5 s by default) and a margin. A
// stop is bounded by progress (it drains at the registrar's pace), so it
// takes this long only against a registrar that keeps serving the herd
// very slowly.
const maxStop = 12*sip.DefaultUnregisterTimeout + 5*time.Second

func (w *world) countOrphans() {
	w.orphans = 0
	for i := range w.regs {
		for _, a := range w.aors {
			w.orphans += max(w.bindings(i, a), 0)
		}
	}
}

// close releases everything.
func (w *world) close() {
	if w.ua != nil {
		_ = w.ua.Close()
	}
	if w.links != nil {
		w.links.close()
	}
	defer func() {
		for i := len(w.cleanup) - 1; i >= 0; i-- {
			w.cleanup[i]()
		}
	}()
	for _, s := range w.regs {
		if s.proxy != nil {
			_ = s.proxy.Close()
		}
		if s.kam != nil {
			_ = s.kam.Stop()
		} else {
			_ = s.r.Close()
		}
	}
}

// fill writes the observations into res.
func (w *world) fill(res *Result) {
	w.mu.Lock()
	defer w.mu.Unlock()
	res.Trunks, res.Links = 0, 0
	if w.trunks != nil {
		res.Trunks = w.o.trunks
	}
	if w.links != nil {
		res.Links = len(w.links.runs)
	}
	var ds []float64
	if w.detect && w.trunks != nil {
		for _, t := range w.trunks {
			if at, ok := w.trunkLost[t]; ok {
				ds = append(ds, at.Sub(w.cut).Seconds())
			} else {
				res.Undetected++
			}
		}
	}
	if len(ds) > 0 {
		p, _ := p99(ds)
		res.DetectTrunksP99S = ptr(secs(time.Duration(p * 1e9)))
	}
	if w.detect && w.links != nil {
		lds, und := w.links.detections()
		if len(lds) > 0 {
			p, _ := p99(lds)
			res.DetectLinksP99S = ptr(secs(time.Duration(p * 1e9)))
		}
		ds = append(ds, lds...)
		res.Undetected += und
	}
	if len(ds) > 0 {
		p, m := p99(ds)
		res.DetectP99S, res.DetectMaxS = ptr(secs(time.Duration(p*1e9))), ptr(secs(time.Duration(m*1e9)))
	}
	if w.bound > 0 {
		res.BoundS = ptr(secs(w.bound))
	}
	res.Recovered = w.recovered
	if !w.recoverAt.IsZero() && !w.restored.IsZero() {
		res.RecoverS = secs(w.lastBack().Sub(w.restored))
		if w.capacity > 0 && res.Trunks > 0 {
			res.RatioToLimit = ptr(secs(time.Duration(res.RecoverS / (float64(res.Trunks) / w.capacity) * 1e9)))
		}
	}
	if !w.cut.IsZero() && len(w.regs) > 0 {
		n503, regs := w.counts()
		res.Rejected503, res.Registers = n503-w.at503, regs-w.atR
	}
	if w.stopTook > 0 {
		res.StopS, res.Stop503 = ptr(secs(w.stopTook)), w.stop503
	}
	res.FalseDeaths = w.falseDeaths()
	res.OrphanBindings, res.StaleRegistered, res.Stuck = w.orphans, w.stale, w.stuck
	if w.recovered < w.total() {
		res.Stuck += w.total() - w.recovered
	}
	if w.links != nil {
		res.LostReplies = w.links.lost()
	}
	if !w.restored.IsZero() && !w.cut.IsZero() {
		res.HoleS = secs(w.restored.Sub(w.cut))
	}
	res.Note = w.note
	if w.env != "" {
		res.Env = w.env
	}
}

// lastBack is when the last trunk or Link came back: the latest of their
// last recoveries, at least the restore (the poll's time when unknown).
func (w *world) lastBack() time.Time {
	if w.byPoll {
		return w.recoverAt
	}
	last := w.restored
	for _, at := range w.trunkBack {
		if at.After(last) {
			last = at
		}
	}
	if w.links != nil {
		if at := w.links.lastBack(); at.After(last) {
			last = at
		}
	}
	if w.recoverAt.Before(last) {
		return w.recoverAt
	}
	return last
}

// falseDeaths counts flow deaths outside the fault's window.
func (w *world) falseDeaths() int {
	n := 0
	for _, at := range w.deaths {
		if w.cut.IsZero() || at.Before(w.cut) || (!w.restored.IsZero() && at.After(w.restored.Add(max(w.bound, w.fineAfter)))) {
			n++
		}
	}
	if w.links != nil {
		n += w.links.falseDeaths()
	}
	return n
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// waitFor polls cond every 20 ms for up to limit.
func waitFor(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, limit)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}
