package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

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
	After     time.Duration // how long to watch after the path returns; 0: auto
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
		c.After = min(max(5*c.limit()/2, 5*time.Second), 25*time.Second)
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
	if r.recover.CompareAndSwap(0, n) {
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

// run plays the incident once.
func run(ctx context.Context, cfg config) (*outcome, error) {
	cfg.defaults()
	quiet := slog.New(slog.DiscardHandler)
	m := &marks{start: time.Now()}
	external := cfg.Registrar != ""

	// --- relink's side: registrar (embedded or real), proxy, fleet.
	var (
		regR    *registrar.Registrar
		cntR    = counters{m: m}
		target  string // host:port the relink proxy forwards to
		relUser = func(i int) string { return fmt.Sprintf("relink%04d", i) }
		relHost = domain
		relPass = password
	)
	if external {
		var u sipmsg.Uri
		if err := sipmsg.ParseUri(cfg.Registrar, &u); err != nil {
			return nil, fmt.Errorf("incident: -registrar %q: %w", cfg.Registrar, err)
		}
		if tp, ok := u.UriParams.Get("transport"); ok && tp != "" && tp != "tcp" && tp != "TCP" {
			return nil, fmt.Errorf("incident: -registrar %q: only TCP can go through the freeze proxy", cfg.Registrar)
		}
		port := u.Port
		if port == 0 {
			port = 5060
		}
		target = net.JoinHostPort(u.Host, strconv.Itoa(port))
		relHost, relPass = u.Host, cfg.Pass
		if cfg.User != "" {
			p := cfg.User
			relUser = func(i int) string {
				if cfg.Trunks == 1 {
					return p
				}
				return p + strconv.Itoa(i)
			}
		}
	} else {
		var err error
		regR, err = newRegistrar(cfg, cntR.onRequest)
		if err != nil {
			return nil, err
		}
		defer regR.Close()
		target = regR.Addr()
	}
	proxyR, err := faultproxy.New(target)
	if err != nil {
		return nil, err
	}
	defer proxyR.Close()

	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(quiet)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(quiet)},
	})
	if err != nil {
		return nil, err
	}
	defer ua.Close()
	relRecs := make(map[*sip.Trunk]*trunkRec, cfg.Trunks)
	var evMu sync.Mutex
	fleet := sip.NewFleet(ua, sip.FleetConfig{ // relink's defaults
		OnStateChange: func(sc sip.TrunkStateChange) {
			r := relRecs[sc.Trunk]
			if r == nil || (m.stop.Load() != 0 && sc.At.UnixNano() >= m.stop.Load()) {
				return
			}
			last := fmt.Sprintf("%s → %s at %+.1f s", sc.From, sc.To, float64(sc.At.UnixNano()-m.start.UnixNano())/1e9)
			if sc.Err != nil {
				last += " (" + sc.Err.Error() + ")"
			}
			r.last.Store(&last)
			if cfg.Events != nil {
				evMu.Lock()
				fmt.Fprintf(cfg.Events, "%s: %s\n", r.name, last)
				evMu.Unlock()
			}
			if sc.From == sip.Registered {
				r.lost(sc.At, m)
			}
			if sc.To == sip.Registered {
				r.registered(sc.At, m)
			}
		},
	})
	regURI := "sip:" + proxyR.Addr() + ";transport=tcp"
	trunks := make([]*sip.Trunk, 0, cfg.Trunks)
	byAoR := make(map[string]*trunkRec, cfg.Trunks)
	for i := range cfg.Trunks {
		t, err := fleet.Add(sip.TrunkConfig{
			Registrars: []string{regURI},
			AOR:        "sip:" + relUser(i) + "@" + relHost,
			Password:   relPass,
			KeepAlive:  cfg.KeepAlive,
		})
		if err != nil {
			return nil, err
		}
		relRecs[t] = &trunkRec{name: relUser(i), tx: t.Transactions}
		byAoR[relUser(i)+"@"+relHost] = relRecs[t]
		trunks = append(trunks, t)
	}

	// --- the naive gateway's side, always embedded.
	cntR.recs.Store(&byAoR)
	cntN := counters{m: m}
	regN, err := newRegistrar(cfg, cntN.onRequest)
	if err != nil {
		return nil, err
	}
	defer regN.Close()
	proxyN, err := faultproxy.New(regN.Addr())
	if err != nil {
		return nil, err
	}
	defer proxyN.Close()
	naive, err := newNaiveFleet(cfg.Trunks, proxyN.Addr(), domain, password, m)
	if err != nil {
		return nil, err
	}
	naiveByAoR := make(map[string]*trunkRec, cfg.Trunks)
	for _, t := range naive.trunks {
		naiveByAoR[t.user+"@"+domain] = &t.rec
	}
	cntN.recs.Store(&naiveByAoR)

	// --- go.
	fctx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fctx) }()
	nctx, stopNaive := context.WithCancel(ctx)
	defer stopNaive()
	naive.start(nctx)
	stopped := false
	shutdown := func() {
		if stopped {
			return
		}
		stopped = true
		m.stop.CompareAndSwap(0, time.Now().UnixNano())
		stopNaive()
		// The measurement is over: let the unregistrations through.
		if regR != nil {
			regR.SetCapacity(0)
		}
		regN.SetCapacity(0)
		stopFleet()
		<-fleetDone
		naive.stop()
	}
	defer shutdown()

	relinkTx := func() uint64 {
		var s uint64
		for _, t := range trunks {
			s += t.Transactions()
		}
		return s
	}
	gateStats := func() (state string, overloaded uint64) {
		for _, g := range fleet.GateStats() {
			st := fmt.Sprintf("%s %.0f/s", g.State, g.Rate)
			if g.Estimate > 0 {
				st += fmt.Sprintf(" (est %.0f)", g.Estimate)
			}
			return st, g.Overloaded
		}
		return "-", 0
	}
	relRegistered := func() int {
		if regR != nil {
			return regR.Stats().AoRs
		}
		return fleet.Stats().Registered
	}
	relRejected := func() uint64 {
		if regR != nil {
			return cntR.rejected.Load()
		}
		_, o := gateStats()
		return o
	}
	relLoad := func() uint64 {
		if regR != nil {
			return cntR.registers.Load()
		}
		return relinkTx()
	}

	// --- the timeline, one line a second.
	var (
		tlMu     sync.Mutex
		timeline []tick
		out      = cfg.Live
	)
	var outMu sync.Mutex
	printf := func(format string, a ...any) {
		if out != nil {
			outMu.Lock()
			fmt.Fprintf(out, format, a...)
			outMu.Unlock()
		}
	}
	printf("incident: %d trunks per population; each registrar serves C = %.0f REGISTER/s (N/C = %.1f s) and grants at most %v\n",
		cfg.Trunks, cfg.Capacity, cfg.limit().Seconds(), cfg.Grant)
	if external {
		printf("          relink → freeze proxy → %s (real registrar); naive → freeze proxy → embedded registrar\n", target)
	}
	printf("          relink: sip.Fleet, default config%s (detection bound %v); naive: sipgo defaults, DoDigestAuth, retry at once\n",
		keepaliveNote(cfg.KeepAlive), cfg.bound())
	printf("          warm-up with unlimited capacity, then C applies; outage %v (no FIN, no RST), then the far end forgets the old connections\n\n", cfg.Outage)
	printf("columns: live = bindings the registrar holds (the truth); thinks = trunks that believe they are registered;\n")
	printf("         REG/s = REGISTERs the registrar received in the second (%% of C); 503 = rejected; gate = relink's gate (state, pace)\n\n")
	printf("%6s %-8s │ %-6s %6s %6s %-11s %4s %-25s │ %-6s %6s %6s %-11s %4s\n",
		"t", "phase", "relink", "live", "thinks", "REG/s", "503", "gate", "naive", "live", "thinks", "REG/s", "503")
	sampleCtx, stopSampler := context.WithCancel(context.Background())
	samplerDone := make(chan struct{})
	go func() {
		defer close(samplerDone)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		var lastRL, lastRR, lastNL, lastNR uint64
		for {
			select {
			case <-sampleCtx.Done():
				return
			case now := <-tk.C:
				rl, rr := relLoad(), relRejected()
				nl, nr := cntN.registers.Load(), cntN.rejected.Load()
				gs, _ := gateStats()
				t := tick{
					T:     now.Sub(m.start).Seconds(),
					Phase: m.phase(now),
					Relink: popTick{Registered: relRegistered(), Believed: fleet.Stats().Registered,
						Load: int(rl - lastRL), Rejected: int(rr - lastRR), Gate: gs},
					Naive: popTick{Registered: regN.Stats().AoRs, Believed: naive.believed(),
						Load: int(nl - lastNL), Rejected: int(nr - lastNR)},
				}
				lastRL, lastRR, lastNL, lastNR = rl, rr, nl, nr
				tlMu.Lock()
				timeline = append(timeline, t)
				tlMu.Unlock()
				printf("%5.0fs %-8s │ %13s %6d %-11s %4d %-25s │ %13s %6d %-11s %4d\n",
					t.T, t.Phase, liveCol(t.Relink.Registered, external), t.Relink.Believed,
					load(t.Relink.Load, cfg.Capacity, !external), t.Relink.Rejected, t.Relink.Gate,
					liveCol(t.Naive.Registered, false), t.Naive.Believed, load(t.Naive.Load, cfg.Capacity, true), t.Naive.Rejected)
			}
		}
	}()
	defer func() { stopSampler(); <-samplerDone }()

	sleep := func(d time.Duration) error {
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}

	// Warm-up: everyone registers, capacity unlimited, so that the story
	// starts with N registered trunks on each side.
	warmEnd := time.Now().Add(maxWarmup)
	for relRegistered() < cfg.Trunks || regN.Stats().AoRs < cfg.Trunks {
		if time.Now().After(warmEnd) {
			return nil, fmt.Errorf("incident: warm-up: only %d relink and %d naive trunks registered after %v",
				relRegistered(), regN.Stats().AoRs, maxWarmup)
		}
		if err := sleep(50 * time.Millisecond); err != nil {
			return nil, err
		}
	}
	if regR != nil {
		regR.SetCapacity(cfg.Capacity)
	}
	regN.SetCapacity(cfg.Capacity)
	printf("%6.1fs all %d+%d registered; capacity C = %.0f/s applies from now\n",
		time.Since(m.start).Seconds(), cfg.Trunks, cfg.Trunks, cfg.Capacity)
	if err := sleep(settle); err != nil {
		return nil, err
	}

	// The outage.
	rejAtFreeze, naiveRejAtFreeze := relRejected(), cntN.rejected.Load()
	for _, r := range relRecs {
		r.txFreeze = r.tx()
	}
	for _, t := range naive.trunks {
		t.rec.txFreeze = t.rec.tx()
	}
	freeze := time.Now()
	m.freeze.Store(freeze.UnixNano())
	proxyR.Freeze()
	proxyN.Freeze()
	printf("%6.1fs FREEZE: both paths silent (no FIN, no RST) for %v\n", freeze.Sub(m.start).Seconds(), cfg.Outage)
	if err := sleep(cfg.Outage); err != nil {
		return nil, err
	}
	restore := time.Now()
	m.restore.Store(restore.UnixNano())
	proxyR.Forget()
	proxyN.Forget()
	printf("%6.1fs RESTORE: paths back; the far end forgot the old connections\n", restore.Sub(m.start).Seconds())

	// Watch the recovery until After has passed; stop early once relink is
	// back and the naive population is back too or has had 1.5 × N/C.
	deadline := restore.Add(cfg.After)
	naiveChance := restore.Add(cfg.limit() * 3 / 2)
	for time.Now().Before(deadline) {
		if countRecovered(relRecs) == cfg.Trunks &&
			(countNaive(naive) == cfg.Trunks || time.Now().After(naiveChance)) {
			if err := sleep(2 * time.Second); err != nil {
				return nil, err
			}
			break
		}
		if err := sleep(100 * time.Millisecond); err != nil {
			return nil, err
		}
	}
	end := time.Now()
	m.stop.Store(end.UnixNano())

	// Snapshot the end state before anyone unregisters.
	// A trunk is registered at the end if its registrar holds a live
	// binding for it — the truth, whatever the trunk believes; against a
	// real registrar, if the trunk says so.
	liveR, liveN := liveAoRs(regR), liveAoRs(regN)
	relEnd := make([]bool, len(trunks))
	relRec := make([]*trunkRec, len(trunks))
	for i, t := range trunks {
		if liveR != nil {
			relEnd[i] = liveR[relUser(i)+"@"+relHost]
		} else {
			relEnd[i] = t.State() == sip.Registered
		}
		relRec[i] = relRecs[t]
		relRec[i].txEnd = relRec[i].tx()
	}
	naiveEnd := make([]bool, len(naive.trunks))
	naiveRec := make([]*trunkRec, len(naive.trunks))
	for i, t := range naive.trunks {
		naiveEnd[i] = liveN[t.user+"@"+domain]
		naiveRec[i] = &t.rec
		naiveRec[i].txEnd = t.rec.tx()
	}
	var relLive, naiveLive = -1, regN.Stats().AoRs
	if regR != nil {
		relLive = regR.Stats().AoRs
	}
	relRej, naiveRej := relRejected()-rejAtFreeze, cntN.rejected.Load()-naiveRejAtFreeze

	stopSampler()
	<-samplerDone
	shutdown()

	bound := cfg.bound().Seconds()
	s := summary{
		Trunks:    cfg.Trunks,
		Capacity:  cfg.Capacity,
		LimitS:    round3(cfg.limit().Seconds()),
		OutageS:   round3(cfg.Outage.Seconds()),
		GrantS:    round3(cfg.Grant.Seconds()),
		KeepAlive: keepaliveNote(cfg.KeepAlive),
		Relink:    summarize(relRec, relEnd, m, relRej, cfg, &bound, relLive),
		Naive:     summarize(naiveRec, naiveEnd, m, naiveRej, cfg, nil, naiveLive),
	}
	if external {
		s.Registrar = cfg.Registrar
	}
	tlMu.Lock()
	defer tlMu.Unlock()
	return &outcome{
		Summary:  s,
		Timeline: timeline,
		FreezeT:  freeze.Sub(m.start).Seconds(),
		RestoreT: restore.Sub(m.start).Seconds(),
		EndT:     end.Sub(m.start).Seconds(),
	}, nil
}

// newRegistrar starts an embedded registrar that grants at most cfg.Grant
// and has no capacity limit until the warm-up is over.
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

func countRecovered(recs map[*sip.Trunk]*trunkRec) int {
	n := 0
	for t, r := range recs {
		if r.recover.Load() != 0 && t.State() == sip.Registered {
			n++
		}
	}
	return n
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
