package sip

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/liveness"
)

// A flow is one TCP or TLS connection in sipgo's pool that at least one
// trunk registered over. It is probed by one liveness.Monitor, however many
// trunks use it: a CRLF ping after the flow's interval of inbound silence,
// dead when nothing arrives within the timeout (see doc.go for why the pong
// is observed through sipgo's read filter).
type flow struct {
	m       *flowMonitor
	conn    sipmsg.Connection
	network string // "tcp" or "tls"
	raddr   string // sipgo's pool key: remote IP:port
	key     flowKey

	live atomic.Pointer[liveness.Monitor]

	mu       sync.Mutex
	gen      uint64 // generation of the current liveness monitor
	interval time.Duration
	timeout  time.Duration
	subs     map[flowSub]flowPref
	dead     bool
	err      error
}

// flowPref is what one subscriber asks of the flow's probing.
type flowPref struct{ interval, timeout time.Duration }

// flowSub is told when a flow it uses dies. flowDead must not block.
type flowSub interface {
	flowDead(f *flow, err error)
}

type flowKey struct{ local, remote netip.AddrPort }

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		if a == nil {
			return netip.AddrPort{}, false
		}
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
	}
	return netip.AddrPort{}, false
}

func keyOf(local, remote net.Addr) (flowKey, bool) {
	l, ok1 := addrPort(local)
	r, ok2 := addrPort(remote)
	return flowKey{l, r}, ok1 && ok2
}

// flowError is the error a dead flow reports: it matches ErrFlowDead and
// unwraps to the cause (liveness.ErrNoResponse, a write error, ...).
type flowError struct {
	cause error
	// silentSince is the flow's last inbound byte, when known: the
	// registrar has been unreachable on it since then.
	silentSince time.Time
}

func (e *flowError) Error() string {
	if e.cause == nil {
		return ErrFlowDead.Error()
	}
	return ErrFlowDead.Error() + ": " + e.cause.Error()
}
func (e *flowError) Is(target error) bool { return target == ErrFlowDead }
func (e *flowError) Unwrap() error        { return e.cause }

// Timeout reports whether the peer went silent (rather than closing).
func (e *flowError) Timeout() bool   { return errors.Is(e.cause, liveness.ErrNoResponse) }
func (e *flowError) Temporary() bool { return true }

var errLeftPool = errors.New("connection closed (left sipgo's pool)")

var crlfPing = []byte("\r\n\r\n")

// flowMonitor watches the flows of one sipgo UserAgent.
type flowMonitor struct {
	// watchReads: relink's read filter is installed (NewUA), so pongs are
	// seen and the probe is a CRLF ping. Otherwise the probe is an
	// OPTIONS request and its response proves the flow alive.
	watchReads bool
	userFilter sipmsg.TransportReadFilter

	tp       *sipmsg.TransportLayer
	txl      *sipmsg.TransactionLayer
	hostname string

	deaths atomic.Uint64 // flows declared dead, for tests

	mu     sync.RWMutex
	byKey  map[flowKey]*flow
	byConn map[sipmsg.Connection]*flow
}

func (m *flowMonitor) init() {
	m.byKey = make(map[flowKey]*flow)
	m.byConn = make(map[sipmsg.Connection]*flow)
}

// bind takes the layers of ua.
func (m *flowMonitor) bind(ua *sipgo.UserAgent) {
	m.tp = ua.TransportLayer()
	m.txl = ua.TransactionLayer()
	m.hostname = ua.Hostname()
}

// filter is sipgo's TransportReadFilter: every read on every connection of
// the UA passes here. It costs a map lookup under a read lock and an atomic
// store; it does not allocate.
func (m *flowMonitor) filter(p sipmsg.TransportReadProps, data []byte) ([]byte, error) {
	if k, ok := keyOf(p.LocalAddr, p.RemoteAddr); ok {
		m.mu.RLock()
		f := m.byKey[k]
		m.mu.RUnlock()
		if f != nil {
			if l := f.live.Load(); l != nil {
				l.Seen()
			}
		}
	}
	if m.userFilter != nil {
		return m.userFilter(p, data)
	}
	return data, nil
}

// attach subscribes sub to the flow of c, creating it, and returns it; nil
// when c is not a TCP or TLS connection relink can watch.
func (m *flowMonitor) attach(c sipmsg.Connection, network string, sub flowSub, pref flowPref) *flow {
	if c == nil || (network != "tcp" && network != "tls") {
		return nil
	}
	ra, ok := c.(interface{ RemoteAddr() net.Addr })
	if !ok {
		return nil
	}
	for {
		m.mu.Lock()
		f := m.byConn[c]
		if f == nil {
			k, ok := keyOf(c.LocalAddr(), ra.RemoteAddr())
			if !ok {
				m.mu.Unlock()
				return nil
			}
			f = &flow{m: m, conn: c, network: network, key: k,
				raddr: ra.RemoteAddr().String(), subs: make(map[flowSub]flowPref)}
			m.byConn[c] = f
			m.byKey[k] = f
		}
		m.mu.Unlock()
		if f.add(sub, pref) {
			return f
		}
		// f died between lookup and add; it has left the maps.
	}
}

func (m *flowMonitor) remove(f *flow) {
	m.mu.Lock()
	if m.byConn[f.conn] == f {
		delete(m.byConn, f.conn)
	}
	if m.byKey[f.key] == f {
		delete(m.byKey, f.key)
	}
	m.mu.Unlock()
}

// close retires every flow: their probes stop and nobody is told (the UA
// is closing).
func (m *flowMonitor) close() {
	m.mu.Lock()
	all := make([]*flow, 0, len(m.byConn))
	for _, f := range m.byConn {
		all = append(all, f)
	}
	clear(m.byConn)
	clear(m.byKey)
	m.mu.Unlock()
	for _, f := range all {
		f.mu.Lock()
		f.dead = true
		f.gen++
		if l := f.live.Swap(nil); l != nil {
			l.Stop()
		}
		f.mu.Unlock()
	}
}

// flows returns the number of flows watched, for tests.
func (m *flowMonitor) flows() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.byConn)
}

// add subscribes sub; false if the flow is already dead.
func (f *flow) add(sub flowSub, p flowPref) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return false
	}
	f.subs[sub] = p
	iv, to := f.prefsLocked()
	if f.live.Load() == nil || iv < f.interval || to < f.timeout {
		f.startLocked(iv, to)
	}
	return true
}

// prefsLocked returns the shortest interval and timeout asked for.
func (f *flow) prefsLocked() (iv, to time.Duration) {
	for _, p := range f.subs {
		if iv == 0 || p.interval < iv {
			iv = p.interval
		}
		if to == 0 || p.timeout < to {
			to = p.timeout
		}
	}
	return iv, to
}

// startLocked (re)starts the liveness monitor. Each start draws the interval
// uniformly from 80–100 % of iv (RFC 5626 §4.4.1), so that flows opened
// together do not ping in step.
func (f *flow) startLocked(iv, to time.Duration) {
	if old := f.live.Load(); old != nil {
		old.Stop()
	}
	f.interval, f.timeout = iv, to
	f.gen++
	gen := f.gen
	jittered := time.Duration(float64(iv) * (0.8 + 0.2*rand.Float64()))
	l := liveness.New(liveness.Config{
		Interval: jittered,
		Timeout:  to,
		Probe:    f.probe,
		OnDead:   func(err error) { f.die(gen, err) },
	})
	f.live.Store(l)
}

// detach unsubscribes sub. A flow nobody uses is no longer probed (the
// connection stays in sipgo's pool).
func (f *flow) detach(sub flowSub) {
	f.mu.Lock()
	if f.dead {
		f.mu.Unlock()
		return
	}
	delete(f.subs, sub)
	if len(f.subs) > 0 {
		f.mu.Unlock()
		return
	}
	f.dead = true // retired: a later attach makes a new flow
	f.gen++
	if l := f.live.Swap(nil); l != nil {
		l.Stop()
	}
	f.mu.Unlock()
	f.m.remove(f)
}

// probe sends one keepalive. It first checks that the connection is still
// sipgo's: when sipgo's reader saw EOF or an error it closed the connection
// and dropped it from the pool, and the flow is gone.
func (f *flow) probe() error {
	if !f.pooled() {
		return errLeftPool
	}
	if !f.m.watchReads {
		go f.optionsPing()
		return nil
	}
	w, ok := f.conn.(io.Writer)
	if !ok {
		return errors.New("connection is not writable")
	}
	_, err := w.Write(crlfPing)
	return err
}

func (f *flow) pooled() bool {
	pool := f.m.tp.Pool(f.network)
	if pool == nil {
		return false
	}
	c := pool.Get(f.raddr)
	if c == nil {
		return false
	}
	c.TryClose() // Get took a reference; the reader still holds its own
	return c == f.conn
}

// optionsPing sends an OPTIONS on the flow (for UserAgents without relink's
// read filter); any response proves the flow alive.
func (f *flow) optionsPing() {
	f.mu.Lock()
	to := f.timeout
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), to)
	defer cancel()
	host, port, err := net.SplitHostPort(f.raddr)
	if err != nil {
		return
	}
	p, _ := strconv.Atoi(port)
	uri := sipmsg.Uri{Scheme: "sip", Host: host, Port: p,
		UriParams: sipmsg.HeaderParams{{K: "transport", V: f.network}}}
	req := newOptions(uri, f.m.hostname, f.network)
	req.SetDestination(f.raddr)
	tx, err := f.m.txl.Request(ctx, req)
	if err != nil {
		return
	}
	defer tx.Terminate()
	select {
	case <-tx.Responses():
		if l := f.live.Load(); l != nil {
			l.Seen()
		}
	case <-tx.Done():
	case <-ctx.Done():
	}
}

// die is the liveness monitor's OnDead.
func (f *flow) die(gen uint64, err error) {
	f.mu.Lock()
	if f.dead || gen != f.gen {
		f.mu.Unlock()
		return
	}
	f.kill(err)
}

// fail declares the flow dead from outside (a failed qualify).
func (f *flow) fail(err error) {
	f.mu.Lock()
	if f.dead {
		f.mu.Unlock()
		return
	}
	if l := f.live.Load(); l != nil {
		l.Stop()
	}
	f.kill(err)
}

// kill runs with f.mu held and releases it: the flow is marked dead, leaves
// the monitor, is evicted from sipgo's pool (closing it, so that sipgo's
// reader exits and, with TerminateOnConnClose, fails the transactions
// pending on it) and its subscribers are told.
func (f *flow) kill(cause error) {
	f.dead = true
	f.gen++
	fe := &flowError{cause: cause}
	if l := f.live.Load(); l != nil {
		fe.silentSince = l.LastSeen()
	}
	f.err = fe
	err := f.err
	subs := make([]flowSub, 0, len(f.subs))
	for s := range f.subs {
		subs = append(subs, s)
	}
	f.live.Store(nil)
	f.mu.Unlock()

	f.m.remove(f)
	f.m.deaths.Add(1)
	pool := f.m.tp.Pool(f.network)
	if pool != nil {
		// Out of the pool before anyone hears of the death: the
		// subscribers re-REGISTER at once, and sipgo would hand them the
		// dead connection again. (No replacement can be pooled at this
		// address meanwhile: sipgo dials only when the address is free.)
		if c := pool.Get(f.raddr); c != nil {
			if c == f.conn {
				pool.Delete(f.raddr)
			}
			c.TryClose() // Get took a reference
		}
	}
	// Tell the subscribers before closing, so that a transaction failed by
	// the close below is attributed to the dead flow.
	for _, s := range subs {
		s.flowDead(f, err)
	}
	if pool != nil {
		_ = pool.CloseAndDelete(f.conn, f.raddr)
	} else {
		_ = f.conn.Close()
	}
}

// newOptions builds an out-of-dialog OPTIONS to uri.
func newOptions(uri sipmsg.Uri, hostname, network string) *sipmsg.Request {
	req := sipmsg.NewRequest(sipmsg.OPTIONS, uri)
	via := &sipmsg.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0",
		Transport: sipmsg.NetworkToUpper(network), Params: sipmsg.NewParams()}
	via.Params.Add("branch", sipmsg.GenerateBranch())
	req.AppendHeader(via)
	from := &sipmsg.FromHeader{Address: sipmsg.Uri{Scheme: "sip", User: "relink", Host: hostname},
		Params: sipmsg.NewParams()}
	from.Params.Add("tag", sipmsg.GenerateTagN(16))
	req.AppendHeader(from)
	req.AppendHeader(&sipmsg.ToHeader{Address: sipmsg.Uri{Scheme: "sip", Host: uri.Host, Port: uri.Port}})
	callID := sipmsg.CallIDHeader(sipmsg.GenerateTagN(24))
	req.AppendHeader(&callID)
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: 1, MethodName: sipmsg.OPTIONS})
	mf := sipmsg.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	req.SetBody(nil)
	req.SetTransport(sipmsg.NetworkToUpper(network))
	return req
}

// deadErr returns the flow's error once it is dead (nil while alive or
// after a plain detach).
func (f *flow) deadErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dead {
		return f.err
	}
	return nil
}
