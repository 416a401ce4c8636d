package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/sip"
)

// relinkSide is the relink population as the incident sees it: one
// sip.Fleet in this process (relinkPop), or -procs worker processes, each
// running its share of the trunks (procsSide).
type relinkSide interface {
	// start runs the trunks until shutdown (or the end of ctx).
	start(ctx context.Context) error
	// believed counts the trunks that think they are registered; tx sums
	// their REGISTER transactions; recovered counts the trunks registered
	// again after the restore and registered now.
	believed() int
	tx() uint64
	recovered() int
	// gate describes the gate (state, pace) and counts the 503s it saw.
	gate() (string, uint64)
	// mark tells the side the moment of the freeze (its trunks' counters
	// are taken then), the restore or the stop.
	mark(kind markKind, at int64)
	// end returns, after the stop mark, each trunk's record in trunk order
	// and the processes' figures (one for a single process).
	end() ([]recSnap, []procEnd, error)
	// shutdown stops the trunks (they unregister) and waits for them.
	shutdown()
}

// markKind names a moment of the incident.
type markKind string

const (
	markFreeze  markKind = "freeze"
	markRestore markKind = "restore"
	markStop    markKind = "stop"
)

// set records the moment in m.
func (k markKind) set(m *marks, at int64) {
	switch k {
	case markFreeze:
		m.freeze.Store(at)
	case markRestore:
		m.restore.Store(at)
	case markStop:
		m.stop.Store(at)
	}
}

// recSnap is a trunk's record at the end, as a worker sends it.
type recSnap struct {
	Detect     int64  `json:"detect,omitempty"`
	Recover    int64  `json:"recover,omitempty"`
	TxFreeze   uint64 `json:"tx_freeze"`
	TxRecover  uint64 `json:"tx_recover,omitempty"`
	TxEnd      uint64 `json:"tx_end"`
	Last       string `json:"last,omitempty"`
	Registered bool   `json:"registered"` // in the trunk's own view
}

// procEnd is one process's figures at the end.
type procEnd struct {
	Trunks   int    `json:"trunks"`
	Rejected uint64 `json:"rejected"` // 503s its gate saw since the freeze
}

// rec turns s back into a record for summarize, merged with what the
// registrar saw (shadow: its first binding after the restore).
func (s recSnap) rec(name string, shadow *trunkRec) *trunkRec {
	r := &trunkRec{name: name, txFreeze: s.TxFreeze, txEnd: s.TxEnd}
	r.detect.Store(s.Detect)
	rc, txr := s.Recover, s.TxRecover
	if sh := shadow.recover.Load(); sh != 0 && (rc == 0 || sh < rc) {
		if rc == 0 {
			txr = s.TxEnd // not seen by the trunk itself: counted to the end
		}
		rc = sh
	}
	r.recover.Store(rc)
	r.txRecover.Store(txr)
	if s.Last != "" {
		last := s.Last
		r.last.Store(&last)
	}
	return r
}

// popConfig configures a relinkPop.
type popConfig struct {
	Registrar string   // the registrar's URI (the freeze proxy)
	Users     []string // one trunk each
	Host      string   // the AoRs' host
	Pass      string
	KeepAlive time.Duration
	Fleet     backoff.Fleet // nil: the gate is this process's own
	Events    io.Writer     // nil: none
}

// relinkPop is relink's trunks in one sip.Fleet with relink's defaults:
// the whole population of a single-process run, or one worker's share.
type relinkPop struct {
	m      *marks
	ua     *sip.UA
	fleet  *sip.Fleet
	trunks []*sip.Trunk
	recs   map[*sip.Trunk]*trunkRec
	events io.Writer
	evMu   sync.Mutex
	rej    uint64 // the gate's 503s at the freeze
	stop   context.CancelFunc
	done   chan struct{}
}

var _ relinkSide = (*relinkPop)(nil)

// newRelinkPop makes the trunks of pc; close the pop when done.
func newRelinkPop(pc popConfig, m *marks) (*relinkPop, error) {
	quiet := slog.New(slog.DiscardHandler)
	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(quiet)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(quiet)},
	})
	if err != nil {
		return nil, err
	}
	p := &relinkPop{m: m, ua: ua, recs: make(map[*sip.Trunk]*trunkRec, len(pc.Users)), events: pc.Events}
	p.fleet = sip.NewFleet(ua, sip.FleetConfig{ // relink's defaults
		Gate:          backoff.GateConfig{Fleet: pc.Fleet},
		OnStateChange: p.onStateChange,
	})
	for _, user := range pc.Users {
		t, err := p.fleet.Add(sip.TrunkConfig{
			Registrars: []string{pc.Registrar},
			AOR:        "sip:" + user + "@" + pc.Host,
			Password:   pc.Pass,
			KeepAlive:  pc.KeepAlive,
		})
		if err != nil {
			ua.Close()
			return nil, err
		}
		p.recs[t] = &trunkRec{name: user, tx: t.Transactions}
		p.trunks = append(p.trunks, t)
	}
	return p, nil
}

// close closes the UA, after shutdown.
func (p *relinkPop) close() { p.ua.Close() }

// onStateChange records a trunk's state change.
func (p *relinkPop) onStateChange(sc sip.TrunkStateChange) {
	m := p.m
	r := p.recs[sc.Trunk]
	if r == nil || (m.stop.Load() != 0 && sc.At.UnixNano() >= m.stop.Load()) {
		return
	}
	last := fmt.Sprintf("%s → %s at %+.1f s", sc.From, sc.To, float64(sc.At.UnixNano()-m.start.UnixNano())/1e9)
	if sc.Err != nil {
		last += " (" + sc.Err.Error() + ")"
	}
	r.last.Store(&last)
	if p.events != nil {
		p.evMu.Lock()
		fmt.Fprintf(p.events, "%s: %s\n", r.name, last)
		p.evMu.Unlock()
	}
	if sc.From == sip.Registered {
		r.lost(sc.At, m)
	}
	if sc.To == sip.Registered {
		r.up.Store(sc.At.UnixNano())
		r.registered(sc.At, m)
	}
}

func (p *relinkPop) start(ctx context.Context) error {
	ctx, p.stop = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		_ = p.fleet.Run(ctx) // ends with ctx
	}()
	return nil
}

func (p *relinkPop) shutdown() {
	if p.stop != nil {
		p.stop()
		<-p.done
		p.stop = nil
	}
}

func (p *relinkPop) believed() int { return p.fleet.Stats().Registered }

func (p *relinkPop) tx() uint64 {
	var s uint64
	for _, t := range p.trunks {
		s += t.Transactions()
	}
	return s
}

func (p *relinkPop) recovered() int {
	n := 0
	for t, r := range p.recs {
		if r.recover.Load() != 0 && t.State() == sip.Registered {
			n++
		}
	}
	return n
}

func (p *relinkPop) gate() (string, uint64) {
	for _, g := range p.fleet.GateStats() {
		st := fmt.Sprintf("%s %.0f/s", g.State, g.Rate)
		if g.Estimate > 0 {
			st += fmt.Sprintf(" (est %.0f)", g.Estimate)
		}
		return st, g.Overloaded
	}
	return "-", 0
}

func (p *relinkPop) mark(kind markKind, at int64) {
	if kind == markFreeze {
		for _, r := range p.recs {
			r.txFreeze = r.tx()
		}
		_, p.rej = p.gate()
	}
	kind.set(p.m, at)
	if kind == markRestore {
		for _, r := range p.recs {
			r.catchUp(p.m)
		}
	}
}

// catchUp records r's recovery if it became registered after the restore
// but before m had the restore: a worker hears of it through a pipe.
func (r *trunkRec) catchUp(m *marks) {
	if up := r.up.Load(); up != 0 && up >= m.restore.Load() {
		r.registered(time.Unix(0, up), m)
	}
}

func (p *relinkPop) end() ([]recSnap, []procEnd, error) {
	snaps := make([]recSnap, len(p.trunks))
	for i, t := range p.trunks {
		r := p.recs[t]
		r.txEnd = r.tx()
		snaps[i] = recSnap{
			Detect: r.detect.Load(), Recover: r.recover.Load(),
			TxFreeze: r.txFreeze, TxRecover: r.txRecover.Load(), TxEnd: r.txEnd,
			Registered: t.State() == sip.Registered,
		}
		if l := r.last.Load(); l != nil {
			snaps[i].Last = *l
		}
	}
	_, rej := p.gate()
	return snaps, []procEnd{{Trunks: len(p.trunks), Rejected: rej - p.rej}}, nil
}
