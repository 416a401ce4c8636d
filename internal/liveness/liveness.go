// Package liveness is the state machine that decides when a byte stream's
// peer is gone: it watches inbound traffic, sends a probe after a quiet
// interval, and declares the peer dead when nothing arrives within a timeout
// of the probe.
//
// It owns no goroutine per stream. A Monitor is scheduled either on a Wheel,
// a timing wheel shared by many Monitors and driven by one goroutine (the
// process's is Default: started with its first Monitor, ended with its
// last), or, without a Wheel, on a runtime timer of its own
// (time.AfterFunc, which starts a goroutine each time it fires). Inbound
// traffic is an atomic timestamp that the reader updates through Seen on
// every inbound read, at the cost of one clock read and one atomic store,
// with no allocation and no scheduling: the Monitor looks at it only when
// it is due. It is shared by conn.Conn, which wraps a net.Conn, and by the
// sip package, which drives it from sipgo's read filter because sipgo's
// dialer hook cannot return a wrapped connection.
//
// The timeline, with I = Interval and T = Timeout:
//
//	last inbound byte at L ─ quiet ─ L+I: Probe() ─ quiet ─ L+I+T: Unread() > 0 and changed? ─ no → OnDead(ErrNoResponse)
//	                                                                                      └─ yes → treated as traffic, re-armed
//
// Any Seen between the probe and L+I+T cancels the death: the next probe goes
// out I after that byte. A silent peer is therefore declared dead I+T after
// its last byte, whether the flow was idle or busy before: exactly on a
// runtime timer; on a Wheel, up to one tick later when Timeout is a whole
// number of ticks (conn's defaults are: 10 ms for Default), up to two
// otherwise (each due time is rounded up to a tick: the probe goes out up to
// a tick late, and its Timeout runs from then).
//
// Unread bytes excuse a reader that does not read, but only while their count
// keeps changing: a count equal to the one that excused the previous probe,
// with no read in between, means nothing arrived for a whole I+T, so the peer
// is declared dead. A peer that sent its last byte at P (read or not) is thus
// declared dead by P+2(I+T) (plus up to four ticks on a Wheel), whatever the reader
// does. The price: a reader stalled until its receive buffer is full (the
// peer can send nothing more, not even an answer) is declared dead one I+T
// later, like a silent peer.
package liveness

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// MinInterval is the smallest Interval or Timeout a Monitor uses; shorter
// (or negative) values are raised to it, so that a misconfiguration cannot
// turn the timer into a busy loop.
const MinInterval = 10 * time.Millisecond

// ErrNoResponse is given to OnDead when nothing arrived within Timeout of a
// probe (and Unread, if set, reported no unread bytes, or the same count as
// at the previous excused probe).
var ErrNoResponse = errors.New("liveness: no response to probe")

// ProbeError is given to OnDead when Probe returned an error.
type ProbeError struct {
	Err error // the error Probe returned
}

// Error returns "liveness: probe failed: " and the probe's error.
func (e *ProbeError) Error() string { return "liveness: probe failed: " + e.Err.Error() }

// Unwrap returns the probe's error.
func (e *ProbeError) Unwrap() error { return e.Err }

// Target is what a Monitor started with Start calls: the stream it
// watches. Its methods have the meaning of Config's fields of the same
// names. A Target that also implements TryProber may have its probes sent
// from the Wheel's goroutine.
type Target interface {
	// Probe sends one probe; it may block (see Config.Probe).
	Probe() error
	// Unread returns the inbound bytes waiting unread (see Config.Unread);
	// return 0 when unknown. It must not block.
	Unread() int
	// OnDead is called once when the peer is declared dead (see
	// Config.OnDead).
	OnDead(err error)
}

// TryProber is a Target that can try a probe without blocking. On a Wheel,
// TryProbe is called from the Wheel's goroutine, which serves every Monitor
// on it: it must return at once, without blocking on a lock or on I/O.
// It returns false when the probe cannot be tried so (a writer holds the
// stream, or the stream cannot be written without blocking): Probe is then
// called on a goroutine of its own, as without TryProbe. When it returns
// true, err is the probe's outcome, as Probe's would be. A Target that
// starts a probe without finishing it (part of it could not be written at
// once) finishes it on a goroutine of its own and returns true, nil.
type TryProber interface {
	TryProbe() (tried bool, err error)
}

// Config configures a Monitor made by New.
type Config struct {
	// Interval is how long inbound traffic may pause before a probe is
	// sent. Values below MinInterval (including zero and negative ones) are
	// raised to MinInterval; callers resolve their own defaults.
	Interval time.Duration
	// Timeout is how long to wait for any inbound byte after a probe before
	// declaring the peer dead. It runs from the moment the probe starts, so
	// a Probe that blocks is bounded by it too. Values below MinInterval are
	// raised to MinInterval.
	Timeout time.Duration
	// Probe sends one probe. It is called from the timer's goroutine (on a
	// Wheel, from a goroutine of its own), never concurrently with itself
	// (a new probe is skipped while the previous call has not returned),
	// and may block: the Timeout runs regardless. An error declares the
	// peer dead with a *ProbeError. Required.
	Probe func() error
	// Unread, if set, is asked before declaring the peer dead. It returns
	// the inbound bytes waiting unread (the reader is slow, the peer may not
	// be gone). A count above zero that differs from the one of the
	// previous excused probe, or that follows a read, counts as traffic and
	// re-arms the Monitor; the same count again does not, so one unread byte
	// cannot keep a dead peer alive (see the package doc). Nil: unread bytes
	// are not looked at, only Seen counts. It must not block.
	Unread func() int
	// OnDead is called once, from the timer's goroutine (on a Wheel, from a
	// goroutine of its own), when the peer is declared dead: with
	// ErrNoResponse or a *ProbeError. It is not called after Stop.
	// Required.
	OnDead func(err error)
	// Wheel schedules the Monitor: nil (the default) = a runtime timer of
	// its own, exact to the nanosecond, whose every firing starts a
	// goroutine; a Wheel (Default) = shared scheduling, one tick coarse.
	Wheel *Wheel
}

// funcTarget adapts Config's functions to Target.
type funcTarget struct {
	probe  func() error
	unread func() int
	onDead func(error)
}

func (f *funcTarget) Probe() error { return f.probe() }

func (f *funcTarget) Unread() int {
	if f.unread == nil {
		return 0
	}
	return f.unread()
}

func (f *funcTarget) OnDead(err error) { f.onDead(err) }

const (
	watching uint8 = iota // waiting for Interval of silence
	probing               // probe sent, waiting for Timeout
	done                  // stopped or dead
)

// Monitor watches one stream. Its methods are safe for concurrent use. Make
// one with New, or embed one in the stream's own type and Start it (it
// then costs no allocation of its own).
type Monitor struct {
	interval, timeout int64 // nanoseconds
	target            Target
	clk               *clock       // time origin (and the Wheel, if any)
	last              atomic.Int64 // ns since clk.base of the last Seen
	inProbe           atomic.Bool  // a Probe call has not returned yet

	mu      sync.Mutex
	state   uint8
	probes  uint32
	probeAt int64
	// The unread count that last excused a silent probe, and when (ns since
	// base, also stored in last then); excusedAt < 0: none yet.
	excusedN  int
	excusedAt int64

	t *time.Timer // without a Wheel

	// On a Wheel, guarded by the Wheel's mu.
	next *Monitor // in the same slot
	due  int64    // the tick it is due at
}

// clock is a Monitor's time origin: a Wheel's (shared), or its own.
type clock struct {
	base  time.Time
	wheel *Wheel // nil: a runtime timer per Monitor
}

// New starts a Monitor. The start counts as traffic: the first probe goes
// out Interval after New unless Seen is called before.
func New(cfg Config) *Monitor {
	if cfg.Probe == nil || cfg.OnDead == nil {
		panic("liveness: New needs Probe and OnDead")
	}
	m := &Monitor{}
	m.Start(cfg.Interval, cfg.Timeout,
		&funcTarget{probe: cfg.Probe, unread: cfg.Unread, onDead: cfg.OnDead}, cfg.Wheel)
	return m
}

// Start starts m, a zero Monitor, watching t with the given Interval and
// Timeout (see Config), scheduled on w (nil: a runtime timer of its own).
// The start counts as traffic. A Monitor is started once.
func (m *Monitor) Start(interval, timeout time.Duration, t Target, w *Wheel) {
	if t == nil {
		panic("liveness: Start needs a Target")
	}
	m.interval = int64(max(interval, MinInterval))
	m.timeout = int64(max(timeout, MinInterval))
	m.target = t
	m.excusedAt = -1
	if w != nil {
		m.clk = &w.clk
		m.last.Store(m.now())
		w.add(m, m.last.Load()+m.interval)
		return
	}
	m.clk = &clock{base: time.Now()}
	m.mu.Lock()
	m.t = time.AfterFunc(time.Duration(m.interval), m.fire)
	m.mu.Unlock()
}

func (m *Monitor) now() int64 { return int64(time.Since(m.clk.base)) }

// Seen records inbound traffic: the peer is alive now. Call it after every
// read that returned at least one byte. It does not allocate or lock.
func (m *Monitor) Seen() { m.last.Store(m.now()) }

// LastSeen returns the time of the last inbound traffic (or of the start).
func (m *Monitor) LastSeen() time.Time { return m.clk.base.Add(time.Duration(m.last.Load())) }

// Probes returns the number of probes sent so far.
func (m *Monitor) Probes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(m.probes)
}

// Stop stops the Monitor; OnDead will not be called after Stop returns
// (unless it was already running). It reports whether the Monitor was
// running: false after an earlier Stop or after OnDead.
func (m *Monitor) Stop() bool { return m.end() }

// end makes m done, if it was not, and releases its scheduling; it reports
// whether it did.
func (m *Monitor) end() bool {
	m.mu.Lock()
	if m.state == done {
		m.mu.Unlock()
		return false
	}
	m.state = done
	m.mu.Unlock()
	m.ended()
	return true
}

// ended releases the scheduling of a Monitor that just became done.
func (m *Monitor) ended() {
	if w := m.clk.wheel; w != nil {
		w.release() // the Wheel drops m when its slot comes round
		return
	}
	m.t.Stop()
}

// action is what step asks its caller to do, outside the lock.
type action uint8

const (
	actNone  action = iota
	actProbe        // send a probe (inProbe is set)
	actDie          // call OnDead (the state is done)
)

// step is the whole state machine: it advances m at now and returns what
// to do and when m is next due (ns since base; meaningless once done).
// m.mu must be held.
func (m *Monitor) step(now int64) (act action, due int64, err error) {
	for {
		switch m.state {
		case done:
			return actNone, 0, nil
		case probing:
			if m.last.Load() >= m.probeAt {
				m.state = watching // answered (or any traffic): back to watching
				continue
			}
			if now-m.probeAt < m.timeout {
				// An early check (Interval < Timeout) found no answer yet.
				return actNone, m.probeAt + m.timeout, nil
			}
			if m.excuse(now) {
				m.state = watching
				continue
			}
			m.state = done
			return actDie, 0, ErrNoResponse
		case watching:
			if last := m.last.Load(); now-last < m.interval {
				return actNone, last + m.interval, nil
			}
			m.state = probing
			m.probeAt = now
			// The timeout runs even if Probe blocks. When Interval is the
			// shorter, check for an answer after Interval too, so that the
			// next probe goes out Interval after the answer, not after
			// the Timeout.
			due = now + min(m.interval, m.timeout)
			if !m.inProbe.CompareAndSwap(false, true) {
				// The previous Probe is still blocked; its timeout decides.
				return actNone, due, nil
			}
			m.probes++
			return actProbe, due, nil
		}
	}
}

// fire is the runtime timer's callback (Monitors without a Wheel).
func (m *Monitor) fire() {
	m.mu.Lock()
	now := m.now()
	act, due, err := m.step(now)
	if m.state != done {
		m.t.Reset(time.Duration(due - now))
	}
	m.mu.Unlock()
	switch act {
	case actProbe:
		m.probe()
	case actDie:
		m.ended()
		m.target.OnDead(err)
	}
}

// probe calls Probe and declares the peer dead if it failed. inProbe is set.
func (m *Monitor) probe() {
	if err := m.target.Probe(); m.probeFailed(err) {
		m.target.OnDead(&ProbeError{Err: err})
	}
}

// probeFailed ends a probe: it clears inProbe and reports whether err
// declares the peer dead (it is not nil and m was not done already); the
// caller then calls OnDead.
func (m *Monitor) probeFailed(err error) bool {
	m.inProbe.Store(false)
	return err != nil && m.end()
}

// excuse reports whether bytes waiting unread excuse a probe left without
// answer at now, and if so records them as traffic at now. Only a count
// above zero excuses, and only if it changed since the previous excuse or a
// read (Seen) happened since: an unchanged count means the peer sent nothing
// for a whole Interval + Timeout. m.mu must be held.
func (m *Monitor) excuse(now int64) bool {
	n := m.target.Unread()
	if n <= 0 || (n == m.excusedN && m.last.Load() == m.excusedAt) {
		return false
	}
	m.excusedN, m.excusedAt = n, now
	m.last.Store(now)
	return true
}

// String describes the Monitor's settings, for logs.
func (m *Monitor) String() string {
	return fmt.Sprintf("liveness.Monitor{Interval: %v, Timeout: %v}",
		time.Duration(m.interval), time.Duration(m.timeout))
}
