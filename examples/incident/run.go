package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/sip"
)

// config is one run of the incident.
type config struct {
	Trunks    int           // N per population
	Capacity  float64       // C: REGISTERs per second each embedded registrar serves
	Outage    time.Duration // how long the path stays silent
	KeepAlive time.Duration // relink's TrunkConfig.KeepAlive; 0 keeps its default
	Grant     time.Duration // longest binding the embedded registrars grant
	After     time.Duration // how long at most to watch after the path returns; 0: auto
	// FarEnd is what the far end does with the old connections at the
	// restore: rst (default), blackhole or hung (see farEnds).
	FarEnd string
	// Procs, when positive, runs the relink population in that many worker
	// processes sharing one gate state on Redis: Redis at this address, or
	// an embedded one when Redis is empty.
	Procs int
	Redis string
	// Registrar, User and Pass, when Registrar is set, point the relink
	// population at a real registrar (through the freeze proxy) instead of
	// its embedded one.
	Registrar, User, Pass string
	// Live receives the per-second timeline; nil: none.
	Live io.Writer
	// Events, if set, receives every state change of the relink trunks.
	Events io.Writer
}

const (
	domain   = "relink.test"
	password = "secret"
	// settle is the pause between the end of the warm-up and the freeze.
	settle = time.Second
	// maxWarmup bounds the initial registration.
	maxWarmup = 30 * time.Second
)

// defaults fills the zero fields of c.
func (c *config) defaults() {
	if c.Trunks <= 0 {
		c.Trunks = 1000
	}
	if !(c.Capacity > 0) {
		c.Capacity = 100
	}
	if c.Outage <= 0 {
		c.Outage = 25 * time.Second
	}
	if c.Grant <= 0 {
		c.Grant = 24 * time.Second
	}
	if c.After <= 0 {
		c.After = sipgoTimerF + min(max(5*c.limit()/2, 5*time.Second), 25*time.Second)
	}
	if c.FarEnd == "" {
		c.FarEnd = farRST
	}
}

// limit is N/C, the shortest time in which the registrar can take N
// registrations.
func (c *config) limit() time.Duration {
	return time.Duration(float64(c.Trunks) / c.Capacity * float64(time.Second))
}

// bound is relink's detection bound: keepalive interval plus its timeout.
func (c *config) bound() time.Duration {
	ka := c.KeepAlive
	if ka <= 0 {
		ka = sip.DefaultKeepAlive
	}
	return ka + sip.DefaultKeepAliveTimeout
}

// marks are the moments of the incident in Unix nanoseconds (0: not yet).
type marks struct {
	start                 time.Time
	freeze, restore, stop atomic.Int64
}

func (m *marks) phase(now time.Time) string {
	n := now.UnixNano()
	switch {
	case m.restore.Load() != 0 && n >= m.restore.Load():
		return "restored"
	case m.freeze.Load() != 0 && n >= m.freeze.Load():
		return "OUTAGE"
	}
	return "warm-up"
}

// trunkRec records one trunk's incident: when it noticed the outage and
// when it was registered again after the path came back.
type trunkRec struct {
	name            string
	detect, recover atomic.Int64           // Unix nanoseconds, 0: not yet
	last            atomic.Pointer[string] // the last state change, for stuck trunks
	// up is when the trunk last became registered (Unix ns), whatever the
	// marks: a worker of -procs may hear of the restore after its first
	// trunks are back.
	up atomic.Int64
	// REGISTER transactions the trunk sent: its counter, and its value at
	// the freeze, at its recovery and at the end.
	tx              func() uint64
	txFreeze, txEnd uint64
	txRecover       atomic.Uint64
}

func (r *trunkRec) lost(at time.Time, m *marks) {
	f, s, n := m.freeze.Load(), m.stop.Load(), at.UnixNano()
	if f == 0 || n < f || (s != 0 && n >= s) {
		return
	}
	r.detect.CompareAndSwap(0, n)
}

func (r *trunkRec) registered(at time.Time, m *marks) {
	rs, s, n := m.restore.Load(), m.stop.Load(), at.UnixNano()
	if rs == 0 || n < rs || (s != 0 && n >= s) {
		return
	}
	if r.recover.CompareAndSwap(0, n) && r.tx != nil {
		r.txRecover.Store(r.tx())
	}
}

// recoveryTx is the number of REGISTER transactions the trunk sent from the
// freeze until it was registered again (until the end if it was not).
func (r *trunkRec) recoveryTx() uint64 {
	if r.recover.Load() != 0 {
		return r.txRecover.Load() - r.txFreeze
	}
	return r.txEnd - r.txFreeze
}

// counters are what an embedded registrar answered to REGISTERs.
//
// A 2xx granting a binding after the restore marks the trunk registered
// again even if the trunk saw no state change: one that never noticed the
// outage (it stayed Registered) and was refreshed later.
type counters struct {
	registers, ok, rejected atomic.Uint64
	m                       *marks
	recs                    atomic.Pointer[map[string]*trunkRec] // by AoR "user@host"
}

func (c *counters) onRequest(ev registrar.Event) {
	if ev.Method != "REGISTER" {
		return
	}
	c.registers.Add(1)
	switch {
	case ev.Status >= 200 && ev.Status < 300:
		c.ok.Add(1)
		if recs := c.recs.Load(); recs != nil && ev.Expires > 0 {
			if r := (*recs)[ev.AoR]; r != nil {
				r.registered(ev.Time, c.m)
			}
		}
	case ev.Status == 503:
		c.rejected.Add(1)
	}
}

// popTick is one population's second of the timeline.
type popTick struct {
	Registered int    `json:"registered"` // live at the registrar (relink with -registrar: its own view)
	Believed   int    `json:"believed"`   // registered in the client's own view
	Load       int    `json:"load"`       // REGISTERs in the second
	Rejected   int    `json:"rejected"`   // 503s in the second
	Gate       string `json:"gate,omitempty"`
	Done       bool   `json:"done,omitempty"` // the population's watch is over
}

// tick is one second of the timeline.
type tick struct {
	T      float64 `json:"t"`
	Phase  string  `json:"phase"`
	Relink popTick `json:"relink"`
	Naive  popTick `json:"naive"`
}

// outcome is the result of a run: the closing table and the timeline.
type outcome struct {
	Summary  summary
	Timeline []tick
	FreezeT  float64 // seconds from start
	RestoreT float64
	EndT     float64
}

// run plays the incident once: setup (both populations, each behind its
// freeze proxy) → warm-up (everyone registered, then capacity C applies) →
// fault (both paths silent for the outage) → restore (the paths return;
// watch the recovery) → report (the closing table and the timeline).
func run(ctx context.Context, cfg config) (*outcome, error) {
	cfg.defaults()
	in := &incident{cfg: cfg, m: &marks{start: time.Now()}, external: cfg.Registrar != ""}
	defer in.close()
	if err := in.setupRelink(); err != nil {
		return nil, err
	}
	if err := in.setupNaive(); err != nil {
		return nil, err
	}
	if err := in.start(ctx); err != nil {
		return nil, err
	}
	if err := in.warmUp(ctx); err != nil {
		return nil, err
	}
	if err := in.fault(ctx); err != nil {
		return nil, err
	}
	if err := in.restore(ctx); err != nil {
		return nil, err
	}
	return in.report()
}

// incident is one run: both populations, their registrars and proxies, the
// timeline, and the moments of the story.
type incident struct {
	cfg      config
	m        *marks
	external bool     // the relink population runs against a real registrar
	closers  []func() // run in reverse by close

	// relink's side.
	regR      *registrar.Registrar // nil with -registrar
	cntR      counters
	target    string // host:port the relink proxy forwards to
	relUser   func(i int) string
	relHost   string
	relPass   string
	proxyR    *faultproxy.Proxy
	rel       relinkSide
	relM      *marks      // relink's moments: its window closes before the naive one
	relShadow []*trunkRec // by trunk: the registrar's first binding after the restore
	relFinal  *relinkEnd  // relink's figures when its window closed
	relDone   atomic.Bool // relink's window closed: the timeline leaves it out

	// the naive gateway's side, always embedded.
	regN   *registrar.Registrar
	cntN   counters
	proxyN *faultproxy.Proxy
	naive  *naiveFleet

	// running.
	stopNaive   context.CancelFunc
	stopped     bool
	stopSampler context.CancelFunc
	samplerDone chan struct{}
	outMu       sync.Mutex
	tlMu        sync.Mutex
	timeline    []tick

	// measured.
	freeze, restored, end time.Time
	actedAt               time.Time // every naive trunk acted (see naiveActed)
	rejAtFreeze           uint64    // relink's 503s before the freeze
	naiveRejAtFreeze      uint64
}

// close stops whatever still runs and closes every part, the last opened
// first.
func (in *incident) close() {
	in.stopTimeline()
	in.shutdown()
	for i := len(in.closers) - 1; i >= 0; i-- {
		in.closers[i]()
	}
}

// sleep waits for d, or returns why ctx ended.
func sleep(ctx context.Context, d time.Duration) error {
	if !ctxtime.Sleep(ctx, d) {
		return context.Cause(ctx)
	}
	return nil
}

// setupRelink starts relink's side: its registrar (embedded, or a real one
// with -registrar), the freeze proxy in front of it, and a Fleet of N trunks
// with relink's defaults.
func (in *incident) setupRelink() error {
	cfg := &in.cfg
	in.relM = &marks{start: in.m.start}
	in.cntR.m = in.relM
	in.relUser = func(i int) string { return fmt.Sprintf("relink%04d", i) }
	in.relHost, in.relPass = domain, password
	if in.external {
		if err := in.useExternal(); err != nil {
			return err
		}
	} else {
		r, err := newRegistrar(*cfg, in.cntR.onRequest)
		if err != nil {
			return err
		}
		in.regR, in.target = r, r.Addr()
		in.closers = append(in.closers, func() { r.Close() })
	}
	p, err := faultproxy.New(in.target)
	if err != nil {
		return err
	}
	in.proxyR = p
	in.closers = append(in.closers, func() { p.Close() })
	pc := popConfig{
		Registrar: "sip:" + p.Addr() + ";transport=tcp",
		Host:      in.relHost, Pass: in.relPass, KeepAlive: cfg.KeepAlive, Events: cfg.Events,
	}
	byAoR := make(map[string]*trunkRec, cfg.Trunks)
	for i := range cfg.Trunks {
		pc.Users = append(pc.Users, in.relUser(i))
		r := &trunkRec{name: in.relUser(i)}
		in.relShadow = append(in.relShadow, r)
		byAoR[in.relUser(i)+"@"+in.relHost] = r
	}
	in.cntR.recs.Store(&byAoR)
	if cfg.Procs > 0 {
		ps, err := newProcsSide(pc, *cfg, in.relM)
		if err != nil {
			return err
		}
		in.rel = ps
		in.closers = append(in.closers, ps.close)
		return nil
	}
	pop, err := newRelinkPop(pc, in.relM)
	if err != nil {
		return err
	}
	in.rel = pop
	in.closers = append(in.closers, pop.close)
	return nil
}

// useExternal points relink's side at the real registrar of -registrar.
func (in *incident) useExternal() error {
	cfg := &in.cfg
	var u sipmsg.Uri
	if err := sipmsg.ParseUri(cfg.Registrar, &u); err != nil {
		return fmt.Errorf("incident: -registrar %q: %w", cfg.Registrar, err)
	}
	if tp, ok := u.UriParams.Get("transport"); ok && tp != "" && tp != "tcp" && tp != "TCP" {
		return fmt.Errorf("incident: -registrar %q: only TCP can go through the freeze proxy", cfg.Registrar)
	}
	port := u.Port
	if port == 0 {
		port = 5060
	}
	in.target = net.JoinHostPort(u.Host, strconv.Itoa(port))
	in.relHost, in.relPass = u.Host, cfg.Pass
	if cfg.User != "" {
		p := cfg.User
		in.relUser = func(i int) string {
			if cfg.Trunks == 1 {
				return p
			}
			return p + strconv.Itoa(i)
		}
	}
	return nil
}

// setupNaive starts the naive gateway's side: an embedded registrar, the
// freeze proxy in front of it, and N naive trunks.
func (in *incident) setupNaive() error {
	in.cntN.m = in.m
	r, err := newRegistrar(in.cfg, in.cntN.onRequest)
	if err != nil {
		return err
	}
	in.regN = r
	in.closers = append(in.closers, func() { r.Close() })
	p, err := faultproxy.New(r.Addr())
	if err != nil {
		return err
	}
	in.proxyN = p
	in.closers = append(in.closers, func() { p.Close() })
	if in.naive, err = newNaiveFleet(in.cfg.Trunks, p.Addr(), domain, password, in.m); err != nil {
		return err
	}
	byAoR := make(map[string]*trunkRec, in.cfg.Trunks)
	for _, t := range in.naive.trunks {
		byAoR[t.user+"@"+domain] = &t.rec
	}
	in.cntN.recs.Store(&byAoR)
	return nil
}

// start runs both populations, prints the header and starts the timeline.
func (in *incident) start(ctx context.Context) error {
	if err := in.rel.start(ctx); err != nil {
		return err
	}
	nctx, stopNaive := context.WithCancel(ctx)
	in.stopNaive = stopNaive
	in.naive.start(nctx)
	in.printHeader()
	in.startTimeline(ctx)
	return nil
}

// shutdown ends the measurement and stops both populations, once.
func (in *incident) shutdown() {
	if in.stopped || in.stopNaive == nil {
		return
	}
	in.stopped = true
	in.m.stop.CompareAndSwap(0, time.Now().UnixNano())
	in.stopNaive()
	// The measurement is over: let the unregistrations through.
	if in.regR != nil {
		in.regR.SetCapacity(0)
	}
	in.regN.SetCapacity(0)
	in.rel.shutdown()
	in.naive.stop()
}

// relRegistered is the relink trunks registered: the registrar's AoRs, or
// the Fleet's own view against a real registrar.
func (in *incident) relRegistered() int {
	if in.regR != nil {
		return in.regR.Stats().AoRs
	}
	return in.rel.believed()
}

func (in *incident) relRejected() uint64 {
	if in.regR != nil {
		return in.cntR.rejected.Load()
	}
	_, o := in.rel.gate()
	return o
}

func (in *incident) relLoad() uint64 {
	if in.regR != nil {
		return in.cntR.registers.Load()
	}
	return in.rel.tx()
}

func (in *incident) printf(format string, a ...any) {
	if in.cfg.Live != nil {
		in.outMu.Lock()
		fmt.Fprintf(in.cfg.Live, format, a...)
		in.outMu.Unlock()
	}
}

func (in *incident) printHeader() {
	cfg := &in.cfg
	in.printf("incident: %d trunks per population; each registrar serves C = %.0f REGISTER/s (N/C = %.1f s) and grants at most %v\n",
		cfg.Trunks, cfg.Capacity, cfg.limit().Seconds(), cfg.Grant)
	if in.external {
		in.printf("          relink → freeze proxy → %s (real registrar); naive → freeze proxy → embedded registrar\n", in.target)
	}
	in.printf("          relink: sip.Fleet, default config%s (detection bound %v); naive: sipgo defaults, DoDigestAuth, retry at once\n",
		keepaliveNote(cfg.KeepAlive), cfg.bound())
	in.printf("          warm-up with unlimited capacity, then C applies; outage %v (no FIN, no RST); far end -farend %s: %s\n", cfg.Outage, cfg.FarEnd, farEnds[cfg.FarEnd].restore)
	if cfg.Procs > 0 {
		in.printf("          relink in %d processes (-procs), one gate state on %s\n", cfg.Procs, redisNote(cfg.Redis))
	}
	in.printf("\n")
	in.printf("columns: live = bindings the registrar holds (the truth); thinks = trunks that believe they are registered;\n")
	in.printf("         REG/s = REGISTERs the registrar received in the second (%% of C); 503 = rejected; gate = relink's gate (state, pace)\n\n")
	in.printf("%6s %-8s │ %-6s %6s %6s %-11s %4s %-25s │ %-6s %6s %6s %-11s %4s\n",
		"t", "phase", "relink", "live", "thinks", "REG/s", "503", "gate", "naive", "live", "thinks", "REG/s", "503")
}

// startTimeline samples both populations once a second, printing a line
// and keeping a tick for each, until stopTimeline or the end of ctx.
func (in *incident) startTimeline(ctx context.Context) {
	ctx, stop := context.WithCancel(ctx)
	in.stopSampler, in.samplerDone = stop, make(chan struct{})
	go func() {
		defer close(in.samplerDone)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		var last [4]uint64 // relink load, relink 503s, naive load, naive 503s
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-tk.C:
				in.sample(now, &last)
			}
		}
	}()
}

// sample takes one tick of the timeline; last holds the counters at the
// previous tick.
func (in *incident) sample(now time.Time, last *[4]uint64) {
	t := tick{
		T:     now.Sub(in.m.start).Seconds(),
		Phase: in.m.phase(now),
		Naive: popTick{Registered: in.regN.Stats().AoRs, Believed: in.naive.believed()},
	}
	cur := [4]uint64{0, 0, in.cntN.registers.Load(), in.cntN.rejected.Load()}
	t.Naive.Load, t.Naive.Rejected = int(cur[2]-last[2]), int(cur[3]-last[3])
	if in.relDone.Load() {
		t.Relink.Done = true
	} else {
		cur[0], cur[1] = in.relLoad(), in.relRejected()
		gs, _ := in.rel.gate()
		t.Relink = popTick{Registered: in.relRegistered(), Believed: in.rel.believed(),
			Load: int(cur[0] - last[0]), Rejected: int(cur[1] - last[1]), Gate: gs}
	}
	*last = cur
	in.tlMu.Lock()
	in.timeline = append(in.timeline, t)
	in.tlMu.Unlock()
	c := in.cfg.Capacity
	rel := fmt.Sprintf("%13s %6d %-11s %4d %-25s", liveCol(t.Relink.Registered, in.external), t.Relink.Believed,
		load(t.Relink.Load, c, !in.external), t.Relink.Rejected, t.Relink.Gate)
	if t.Relink.Done {
		rel = fmt.Sprintf("%-63s", "   (watch over)")
	}
	in.printf("%5.0fs %-8s │ %s │ %13s %6d %-11s %4d\n", t.T, t.Phase, rel,
		liveCol(t.Naive.Registered, false), t.Naive.Believed, load(t.Naive.Load, c, true), t.Naive.Rejected)
}

// stopTimeline stops the sampler and waits for it.
func (in *incident) stopTimeline() {
	if in.stopSampler != nil {
		in.stopSampler()
		<-in.samplerDone
	}
}

// warmUp waits until everyone is registered, capacity unlimited, so that the
// story starts with N registered trunks on each side; then C applies.
func (in *incident) warmUp(ctx context.Context) error {
	cfg := &in.cfg
	warmEnd := time.Now().Add(maxWarmup)
	for in.relRegistered() < cfg.Trunks || in.regN.Stats().AoRs < cfg.Trunks {
		if time.Now().After(warmEnd) {
			return fmt.Errorf("incident: warm-up: only %d relink and %d naive trunks registered after %v",
				in.relRegistered(), in.regN.Stats().AoRs, maxWarmup)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	if in.regR != nil {
		in.regR.SetCapacity(cfg.Capacity)
	}
	in.regN.SetCapacity(cfg.Capacity)
	in.printf("%6.1fs all %d+%d registered; capacity C = %.0f/s applies from now\n",
		time.Since(in.m.start).Seconds(), cfg.Trunks, cfg.Trunks, cfg.Capacity)
	return sleep(ctx, settle)
}

// fault silences both paths (no FIN, no RST) for the outage.
func (in *incident) fault(ctx context.Context) error {
	in.rejAtFreeze, in.naiveRejAtFreeze = in.relRejected(), in.cntN.rejected.Load()
	for _, t := range in.naive.trunks {
		t.rec.txFreeze = t.rec.tx()
	}
	in.freeze = time.Now()
	in.m.freeze.Store(in.freeze.UnixNano())
	in.rel.mark(markFreeze, in.freeze.UnixNano())
	in.proxyR.Freeze()
	in.proxyN.Freeze()
	in.printf("%6.1fs FREEZE: both paths silent (no FIN, no RST) for %v\n", in.freeze.Sub(in.m.start).Seconds(), in.cfg.Outage)
	return sleep(ctx, in.cfg.Outage)
}

// grace is how long a population is watched after its window's condition
// was met.
const grace = 2 * time.Second

// restore brings the paths back, the far end treating the old connections
// as its mode says (farEnds), and watches each population until its own
// timers have fired: relink until it is back; the naive population until
// every trunk has acted (recovered, or seen its REGISTER fail and sent
// another) and then until it is back or has had 1.5 × N/C more; each plus
// grace, and both at most until After. Relink's figures are taken when its
// window closes, so that the naive population's retries (at once, on any
// failure) do not weigh on them.
func (in *incident) restore(ctx context.Context) error {
	in.restored = time.Now()
	in.m.restore.Store(in.restored.UnixNano())
	in.rel.mark(markRestore, in.restored.UnixNano())
	fe := farEnds[in.cfg.FarEnd]
	fe.forget(in.proxyR)
	fe.forget(in.proxyN)
	in.printf("%6.1fs RESTORE: paths back; %s\n", in.restored.Sub(in.m.start).Seconds(), fe.restore)
	deadline := in.restored.Add(in.cfg.After)
	var relBack, naiveDone time.Time // when each window's condition was met
	for {
		now := time.Now()
		over := !now.Before(deadline)
		if relBack.IsZero() && in.rel.recovered() >= in.cfg.Trunks {
			relBack = now
		}
		if in.relFinal == nil && (over || (!relBack.IsZero() && now.Sub(relBack) >= grace)) {
			if err := in.closeRelink(now); err != nil {
				return err
			}
		}
		if naiveDone.IsZero() && in.naiveWatched(now) {
			naiveDone = now
		}
		if over || (in.relFinal != nil && !naiveDone.IsZero() && now.Sub(naiveDone) >= grace) {
			break
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	in.end = time.Now()
	in.m.stop.Store(in.end.UnixNano())
	return nil
}

// naiveWatched reports whether the naive population's window can close:
// every trunk has acted, and the population is back or has had 1.5 × N/C
// since.
func (in *incident) naiveWatched(now time.Time) bool {
	if in.actedAt.IsZero() {
		if !in.naive.acted() {
			return false
		}
		in.actedAt = now
		in.printf("%6.1fs every naive trunk has acted (recovered, or failed and retried)\n", now.Sub(in.m.start).Seconds())
	}
	return countNaive(in.naive) == in.cfg.Trunks || now.Sub(in.actedAt) > in.cfg.limit()*3/2
}

// relinkEnd is the relink population's state when its window closed.
type relinkEnd struct {
	snaps    []recSnap
	procs    []procEnd
	live     map[string]bool // AoRs with a binding; nil with a real registrar
	liveN    int             // their count; −1 with a real registrar
	rejected uint64          // 503s from the freeze
}

// closeRelink closes relink's window: its figures are taken now.
func (in *incident) closeRelink(now time.Time) error {
	in.rel.mark(markStop, now.UnixNano())
	f := &relinkEnd{live: liveAoRs(in.regR), liveN: -1, rejected: in.relRejected() - in.rejAtFreeze}
	if in.regR != nil {
		f.liveN = in.regR.Stats().AoRs
	}
	var err error
	if f.snaps, f.procs, err = in.rel.end(); err != nil {
		return err
	}
	in.relFinal = f
	in.relDone.Store(true)
	in.printf("%6.1fs relink's watch ends: its figures are taken, its trunks stop; the naive population's watch goes on\n",
		now.Sub(in.m.start).Seconds())
	// Its trunks stop (and unregister): nothing of theirs weighs on the
	// naive population's window, nor theirs on it.
	if in.regR != nil {
		in.regR.SetCapacity(0)
	}
	in.rel.shutdown()
	return nil
}

// report snapshots the end state before anyone unregisters, stops
// everything and sums the run up. A trunk is registered at the end if its
// registrar holds a live binding for it — the truth, whatever the trunk
// believes; against a real registrar, if the trunk says so.
func (in *incident) report() (*outcome, error) {
	cfg, m, f := &in.cfg, in.m, in.relFinal
	liveR, liveN, snaps := f.live, liveAoRs(in.regN), f.snaps
	relEnd := make([]bool, cfg.Trunks)
	relRec := make([]*trunkRec, cfg.Trunks)
	for i, sn := range snaps {
		if liveR != nil {
			relEnd[i] = liveR[in.relUser(i)+"@"+in.relHost]
		} else {
			relEnd[i] = sn.Registered
		}
		relRec[i] = sn.rec(in.relUser(i), in.relShadow[i])
	}
	naiveEnd := make([]bool, len(in.naive.trunks))
	naiveRec := make([]*trunkRec, len(in.naive.trunks))
	for i, t := range in.naive.trunks {
		naiveEnd[i] = liveN[t.user+"@"+domain]
		naiveRec[i] = &t.rec
		naiveRec[i].txEnd = t.rec.tx()
	}
	naiveLive := in.regN.Stats().AoRs
	naiveRej := in.cntN.rejected.Load() - in.naiveRejAtFreeze

	in.stopTimeline()
	in.shutdown()

	bound := cfg.bound().Seconds()
	fe := farEnds[cfg.FarEnd]
	s := summary{
		Trunks:     cfg.Trunks,
		Capacity:   cfg.Capacity,
		LimitS:     round3(cfg.limit().Seconds()),
		OutageS:    round3(cfg.Outage.Seconds()),
		GrantS:     round3(cfg.Grant.Seconds()),
		KeepAlive:  keepaliveNote(cfg.KeepAlive),
		FarEnd:     cfg.FarEnd,
		FarEndNote: fe.note,
		Relink:     summarize(relRec, relEnd, in.relM, f.rejected, *cfg, &bound, f.liveN),
		Naive:      summarize(naiveRec, naiveEnd, m, naiveRej, *cfg, nil, naiveLive),
	}
	s.Naive.Ends = fe.naiveEnds(s.Naive)
	if cfg.Procs > 0 {
		s.Procs, s.Redis = cfg.Procs, redisNote(cfg.Redis)
		s.Processes = perProcess(relRec, relEnd, f.procs, in.relM, *cfg, bound)
	}
	if in.external {
		s.Registrar = cfg.Registrar
	}
	in.tlMu.Lock()
	defer in.tlMu.Unlock()
	return &outcome{
		Summary:  s,
		Timeline: in.timeline,
		FreezeT:  in.freeze.Sub(m.start).Seconds(),
		RestoreT: in.restored.Sub(m.start).Seconds(),
		EndT:     in.end.Sub(m.start).Seconds(),
	}, nil
}

// perProcess sums up each process's trunks (they are in process order:
// procs[i].Trunks each).
func perProcess(recs []*trunkRec, registered []bool, procs []procEnd, m *marks, cfg config, bound float64) []popSummary {
	var out []popSummary
	first := 0
	for i, p := range procs {
		last := min(first+p.Trunks, len(recs))
		s := summarize(recs[first:last], registered[first:last], m, p.Rejected, cfg, &bound, -1)
		s.Proc, s.StuckSample = ptrInt(i), nil
		out = append(out, s)
		first = last
	}
	return out
}

func ptrInt(i int) *int { return &i }

// newRegistrar starts an embedded registrar that grants at most cfg.Grant
// and has no capacity limit until the warm-up is over.
//
//nolint:contextcheck // registrar.New takes no ctx: the registrar lives until its Close
func newRegistrar(cfg config, on func(registrar.Event)) (*registrar.Registrar, error) {
	r, err := registrar.New(registrar.Config{
		DisableUDP: true,
		Password:   password,
		MinExpires: -1,
		MaxExpires: cfg.Grant,
		// Capacity C is enforced as Kamailio's rate limit in
		// internal/kamailio is: at most C/10 per 100 ms window; windows
		// are longer for a small C, so that each admits at least 10.
		Window:    max(100*time.Millisecond, time.Duration(10/cfg.Capacity*float64(time.Second))),
		OnRequest: on,
	})
	if err != nil {
		return nil, fmt.Errorf("incident: %w", err)
	}
	return r, nil
}

// liveAoRs returns the AoRs ("user@host") with a live binding at r; nil
// for a nil r.
func liveAoRs(r *registrar.Registrar) map[string]bool {
	if r == nil {
		return nil
	}
	live := make(map[string]bool)
	for k, a := range r.AoRs() {
		if len(a.Bindings) > 0 {
			live[k] = true
		}
	}
	return live
}

func countNaive(f *naiveFleet) int {
	n := 0
	for _, t := range f.trunks {
		if t.rec.recover.Load() != 0 && t.believes.Load() {
			n++
		}
	}
	return n
}

func keepaliveNote(ka time.Duration) string {
	if ka <= 0 {
		return ""
	}
	return fmt.Sprintf(" except KeepAlive %v (-keepalive)", ka)
}

// liveCol formats the registrar's count of live bindings ("-" when unknown: a
// real registrar).
func liveCol(n int, unknown bool) string {
	if unknown {
		return "-"
	}
	return fmt.Sprint(n)
}

func load(n int, c float64, known bool) string {
	if !known {
		return fmt.Sprintf("%d", n)
	}
	return fmt.Sprintf("%d (%.0f%%)", n, 100*float64(n)/c)
}

var errUsage = errors.New("incident: usage")
