// Package liveness is the state machine that decides when a byte stream's
// peer is gone: it watches inbound traffic, sends a probe after a quiet
// interval, and declares the peer dead when nothing arrives within a timeout
// of the probe.
//
// It owns no goroutine: a Monitor is one runtime timer (time.AfterFunc) that
// re-arms itself, plus an atomic timestamp that the reader updates through
// Seen on every inbound read, at the cost of one clock read and one atomic
// store, with no allocation. It is shared by conn.Conn, which wraps a
// net.Conn, and by the sip package, which drives it from sipgo's read filter
// because sipgo's dialer hook cannot return a wrapped connection.
//
// The timeline, with I = Interval and T = Timeout:
//
//	last inbound byte at L ─ quiet ─ L+I: Probe() ─ quiet ─ L+I+T: Unread() > 0 and changed? ─ no → OnDead(ErrNoResponse)
//	                                                                                      └─ yes → treated as traffic, re-armed
//
// Any Seen between the probe and L+I+T cancels the death: the next probe goes
// out I after that byte. A silent peer is therefore declared dead exactly
// I+T after its last byte, whether the flow was idle or busy before.
//
// Unread bytes excuse a reader that does not read, but only while their count
// keeps changing: a count equal to the one that excused the previous probe,
// with no read in between, means nothing arrived for a whole I+T, so the peer
// is declared dead. A peer that sent its last byte at P (read or not) is thus
// declared dead by P+2(I+T), whatever the reader does. The price: a reader
// stalled until its receive buffer is full (the peer can send nothing more,
// not even an answer) is declared dead one I+T later, like a silent peer.
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

// Config configures a Monitor.
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
	// Probe sends one probe. It is called from the timer's goroutine, never
	// concurrently with itself (a new probe is skipped while the previous
	// call has not returned), and may block: the Timeout runs regardless.
	// An error declares the peer dead with a *ProbeError. Required.
	Probe func() error
	// Unread, if set, is asked before declaring the peer dead. It returns
	// the inbound bytes waiting unread (the reader is slow, the peer may not
	// be gone). A count above zero that differs from the one of the
	// previous excused probe, or that follows a read, counts as traffic and
	// re-arms the Monitor; the same count again does not, so one unread byte
	// cannot keep a dead peer alive (see the package doc). Nil: unread bytes
	// are not looked at, only Seen counts.
	Unread func() int
	// OnDead is called once, from the timer's goroutine, when the peer is
	// declared dead: with ErrNoResponse or a *ProbeError. It is not called
	// after Stop. Required.
	OnDead func(err error)
}

const (
	watching uint8 = iota // waiting for Interval of silence
	probing               // probe sent, waiting for Timeout
	done                  // stopped or dead
)

// Monitor watches one stream. Its methods are safe for concurrent use.
type Monitor struct {
	interval, timeout int64 // nanoseconds
	probe             func() error
	unread            func() int
	onDead            func(error)
	base              time.Time    // monotonic origin of last and probeAt
	last              atomic.Int64 // ns since base of the last Seen
	inProbe           atomic.Bool  // a Probe call has not returned yet

	mu      sync.Mutex
	t       *time.Timer
	state   uint8
	probeAt int64
	probes  uint64
	// The unread count that last excused a silent probe, and when (ns since
	// base, also stored in last then); excusedAt < 0: none yet.
	excusedN  int
	excusedAt int64
}

// New starts a Monitor. The start counts as traffic: the first probe goes
// out Interval after New unless Seen is called before.
func New(cfg Config) *Monitor {
	if cfg.Probe == nil || cfg.OnDead == nil {
		panic("liveness: New needs Probe and OnDead")
	}
	m := &Monitor{
		interval:  int64(max(cfg.Interval, MinInterval)),
		timeout:   int64(max(cfg.Timeout, MinInterval)),
		probe:     cfg.Probe,
		unread:    cfg.Unread,
		onDead:    cfg.OnDead,
		base:      time.Now(),
		excusedAt: -1,
	}
	m.mu.Lock()
	m.t = time.AfterFunc(time.Duration(m.interval), m.fire)
	m.mu.Unlock()
	return m
}

func (m *Monitor) now() int64 { return int64(time.Since(m.base)) }

// Seen records inbound traffic: the peer is alive now. Call it after every
// read that returned at least one byte. It does not allocate or lock.
func (m *Monitor) Seen() { m.last.Store(m.now()) }

// LastSeen returns the time of the last inbound traffic (or of New).
func (m *Monitor) LastSeen() time.Time { return m.base.Add(time.Duration(m.last.Load())) }

// Probes returns the number of probes sent so far.
func (m *Monitor) Probes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.probes
}

// Stop stops the Monitor; OnDead will not be called after Stop returns
// (unless it was already running). It reports whether the Monitor was
// running: false after an earlier Stop or after OnDead.
func (m *Monitor) Stop() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state == done {
		return false
	}
	m.state = done
	m.t.Stop()
	return true
}

// fire is the timer's callback: the whole state machine.
func (m *Monitor) fire() {
	m.mu.Lock()
	now := m.now()
	for {
		switch m.state {
		case done:
			m.mu.Unlock()
			return
		case probing:
			if m.last.Load() >= m.probeAt {
				m.state = watching // answered (or any traffic): back to watching
				continue
			}
			if waited := now - m.probeAt; waited < m.timeout {
				// An early check (Interval < Timeout) found no answer yet.
				m.t.Reset(time.Duration(m.timeout - waited))
				m.mu.Unlock()
				return
			}
			if m.excuse(now) {
				m.state = watching
				continue
			}
			m.die(ErrNoResponse) // unlocks
			return
		case watching:
			if quiet := now - m.last.Load(); quiet < m.interval {
				m.t.Reset(time.Duration(m.interval - quiet))
				m.mu.Unlock()
				return
			}
			m.state = probing
			m.probeAt = now
			// The timeout runs even if Probe blocks. When Interval is the
			// shorter, check for an answer after Interval too, so that the
			// next probe goes out Interval after the answer, not after
			// the Timeout.
			m.t.Reset(time.Duration(min(m.interval, m.timeout)))
			if !m.inProbe.CompareAndSwap(false, true) {
				// The previous Probe is still blocked; its timeout decides.
				m.mu.Unlock()
				return
			}
			m.probes++
			m.mu.Unlock()
			err := m.probe()
			m.inProbe.Store(false)
			if err != nil {
				m.mu.Lock()
				if m.state == done {
					m.mu.Unlock()
					return
				}
				m.die(&ProbeError{Err: err})
			}
			return
		}
	}
}

// excuse reports whether bytes waiting unread excuse a probe left without
// answer at now, and if so records them as traffic at now. Only a count
// above zero excuses, and only if it changed since the previous excuse or a
// read (Seen) happened since: an unchanged count means the peer sent nothing
// for a whole Interval + Timeout. m.mu must be held.
func (m *Monitor) excuse(now int64) bool {
	if m.unread == nil {
		return false
	}
	n := m.unread()
	if n <= 0 || (n == m.excusedN && m.last.Load() == m.excusedAt) {
		return false
	}
	m.excusedN, m.excusedAt = n, now
	m.last.Store(now)
	return true
}

// die marks the Monitor dead and calls OnDead outside the lock. m.mu must be
// held; die unlocks it.
func (m *Monitor) die(err error) {
	m.state = done
	m.t.Stop()
	m.mu.Unlock()
	m.onDead(err)
}

// String describes the Monitor's settings, for logs.
func (m *Monitor) String() string {
	return fmt.Sprintf("liveness.Monitor{Interval: %v, Timeout: %v}",
		time.Duration(m.interval), time.Duration(m.timeout))
}
