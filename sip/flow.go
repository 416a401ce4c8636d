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

// A flow is one TCP, TLS, WS or WSS connection in sipgo's pool that at
// least one trunk registered over (or, with UAConfig.WatchCalls, that the
// application's requests used); for UDP, the pair of the UA's socket and a
// registrar, which is not probed (the trunks qualify it with OPTIONS) but
// dies the same way. It is probed by one liveness.Monitor, however many
// trunks use it: a CRLF ping after the flow's interval of inbound silence,
// dead when nothing arrives within the timeout (see doc.go for why the pong
// is observed through sipgo's read filter).
type flow struct {
	m       *flowMonitor
	conn    sipmsg.Connection
	network string // "tcp", "tls", "ws", "wss" or "udp"
	raddr   string // sipgo's pool key: remote IP:port
	key     flowKey

	live   atomic.Pointer[liveness.Monitor]
	hangID int32 // its id in the UA's hangups, 0 if not watched there; under hangups.mu

	// CRLF keepalive fallback (RFC 5626 peers that never answer the ping):
	// until the first pong each probe is a CRLF ping and an OPTIONS; after
	// noPongLimit probes answered without a pong, OPTIONS only.
	ponged   atomic.Bool  // a CRLF pong arrived
	noCRLF   atomic.Bool  // the peer does not answer CRLF: probe with OPTIONS
	unponged atomic.Int32 // probes answered (some bytes came) without a pong
	probing  atomic.Bool  // a probe went out since the last answer
	answered atomic.Bool  // bytes arrived after the last probe

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
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		if a == nil {
			return ap, false
		}
		ap = a.AddrPort()
	case *net.UDPAddr:
		if a == nil {
			return ap, false
		}
		ap = a.AddrPort()
	default:
		return ap, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
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

// noPongLimit is the number of probes answered without a CRLF pong after
// which a flow is probed with OPTIONS only.
const noPongLimit = 3

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

	kit            *dialKit     // nil for WrapUA
	tls            *tlsDispatch // nil for WrapUA
	connectTimeout time.Duration
	onDeath        func(FlowDeath)
	watchCalls     bool
	callPref       flowPref // probing of the connections WatchCalls watches
	// options sends an OPTIONS on f and reports whether it was answered
	// (the txl path; tests replace it).
	options func(f *flow) bool

	deaths atomic.Uint64 // flows declared dead, for tests
	hang   *hangups      // a peer's FIN or RST seen at once (Linux); nil in tests

	mu     sync.RWMutex
	byKey  map[flowKey]*flow
	byConn map[sipmsg.Connection]*flow

	lost lostPaths // destinations whose last TCP connect timed out
}

func (m *flowMonitor) init() {
	m.byKey = make(map[flowKey]*flow)
	m.byConn = make(map[sipmsg.Connection]*flow)
	if m.options == nil {
		m.options = (*flow).optionsPing
	}
	m.hang = newHangups()
	if m.callPref == (flowPref{}) {
		m.callPref = flowPref{interval: DefaultKeepAlive, timeout: DefaultKeepAliveTimeout}
	}
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
			f.seen(data)
		} else if m.watchCalls {
			m.watchCall(p, k)
		}
	}
	if m.userFilter != nil {
		return m.userFilter(p, data)
	}
	return data, nil
}

// attach subscribes sub to the flow of c, creating it, and returns it; nil
// when c is not a TCP, TLS, WS or WSS connection relink can watch (UDP:
// attachUDP).
func (m *flowMonitor) attach(c sipmsg.Connection, network string, sub flowSub, pref flowPref) *flow {
	switch network {
	case "tcp", "tls", "ws", "wss":
	default:
		return nil
	}
	if c == nil {
		return nil
	}
	ra, ok := c.(interface{ RemoteAddr() net.Addr })
	if !ok {
		return nil
	}
	return m.attachAt(c, network, ra.RemoteAddr(), sub, pref)
}

// attachUDP subscribes sub to the UDP flow from the UA's socket c to
// remote (host:port), creating it. A UDP flow is not probed (its trunks
// qualify the registrar with OPTIONS and call fail when it goes
// unanswered), nor evicted or closed when it dies (the socket is shared):
// its death tells every trunk on it and OnFlowDeath.
func (m *flowMonitor) attachUDP(c sipmsg.Connection, remote string, sub flowSub) *flow {
	if c == nil {
		return nil
	}
	ra, err := net.ResolveUDPAddr("udp", remote)
	if err != nil {
		return nil
	}
	return m.attachAt(c, "udp", ra, sub, flowPref{})
}

func (m *flowMonitor) attachAt(c sipmsg.Connection, network string, remote net.Addr, sub flowSub, pref flowPref) *flow {
	for {
		m.mu.Lock()
		f := m.byConn[c]
		if network == "udp" {
			f = nil // one socket, a flow per remote
		}
		k, ok := keyOf(c.LocalAddr(), remote)
		if !ok {
			m.mu.Unlock()
			return nil
		}
		if f == nil {
			f = m.byKey[k]
		}
		fresh := f == nil
		if fresh {
			f = &flow{m: m, conn: c, network: network, key: k,
				raddr: remote.String(), subs: make(map[flowSub]flowPref)}
			if network != "udp" {
				m.byConn[c] = f
			}
			m.byKey[k] = f
		}
		m.mu.Unlock()
		if fresh && network == "wss" && m.kit != nil {
			m.kit.tuneKernel(c) // sipgo dialled it without relink's dialer
		}
		if fresh && network != "udp" {
			m.hang.watch(f)
		}
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
	m.hang.forget(f)
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
	m.hang.close()
	for _, f := range all {
		f.mu.Lock()
		f.dead = true
		f.gen++
		if l := f.live.Swap(nil); l != nil {
			l.Stop()
		}
		f.mu.Unlock()
	}
	m.release(all)
}

// release ends the connections of the retired flows all as kill does and
// waits, at most drainWait in all, until sipgo's readers have released
// them: sipgo's Close, which follows, would otherwise set their counts to
// 0 under the readers, and each reader's release would take it below zero.
func (m *flowMonitor) release(all []*flow) {
	var conns []sipmsg.Connection
	for _, f := range all {
		if f.network != "udp" {
			m.drain(f.conn)
			closeSocket(f.conn)
			conns = append(conns, f.conn)
		}
	}
	deadline := time.Now().Add(drainWait)
	for _, c := range conns {
		for c.Ref(0) > 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
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
	if f.network == "udp" {
		return true // qualified by its trunks, not probed
	}
	iv, to := f.prefsLocked()
	if iv <= 0 || to <= 0 {
		return true
	}
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
//
// Until the peer has answered a CRLF ping, the ping goes out with an
// OPTIONS: a registrar that does not implement RFC 5626 ignores the ping
// but answers the OPTIONS, which proves the flow alive as any inbound byte
// does. After noPongLimit probes answered without a pong the flow is
// probed with OPTIONS only; the first pong makes it CRLF only.
func (f *flow) probe() error {
	if !f.pooled() {
		return errLeftPool
	}
	if f.answered.Swap(false) && !f.ponged.Load() && f.unponged.Add(1) >= noPongLimit {
		f.noCRLF.Store(true) // answered, never with a pong
	}
	f.probing.Store(true)
	if !f.m.watchReads || f.noCRLF.Load() {
		go f.m.options(f)
		return nil
	}
	w, ok := f.conn.(io.Writer)
	if !ok {
		return errors.New("connection is not writable")
	}
	if !f.ponged.Load() {
		go f.m.options(f)
	}
	// A fresh copy each time: sipgo's WS transport masks the payload in
	// place (gobwas/ws MaskFrameInPlace).
	ping := make([]byte, len(crlfPing))
	copy(ping, crlfPing)
	_, err := w.Write(ping)
	return err
}

// seen is called by the read filter for every read on the flow: any byte
// proves it alive; a read of CRLFs only is a pong.
func (f *flow) seen(data []byte) {
	if l := f.live.Load(); l != nil {
		l.Seen()
	}
	if isPong(data) {
		if !f.ponged.Load() {
			f.ponged.Store(true)
			f.noCRLF.Store(false)
		}
		return
	}
	if f.probing.Swap(false) {
		f.answered.Store(true)
	}
}

// isPong reports whether data is CRLFs only (RFC 5626 §4.4.1's pong).
func isPong(data []byte) bool {
	if len(data) == 0 || len(data) > 4 {
		return false
	}
	for _, b := range data {
		if b != '\r' && b != '\n' {
			return false
		}
	}
	return true
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
// read filter, and peers that do not answer CRLF); any response proves the
// flow alive.
func (f *flow) optionsPing() bool {
	f.mu.Lock()
	to := f.timeout
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), to)
	defer cancel()
	host, port, err := net.SplitHostPort(f.raddr)
	if err != nil {
		return false
	}
	p, _ := strconv.Atoi(port)
	uri := sipmsg.Uri{Scheme: "sip", Host: host, Port: p,
		UriParams: sipmsg.HeaderParams{{K: "transport", V: f.network}}}
	req := newOptions(uri, f.m.hostname, f.network)
	req.SetDestination(f.raddr)
	tx, err := f.m.txl.Request(ctx, req)
	if err != nil {
		return false
	}
	defer tx.Terminate()
	select {
	case <-tx.Responses():
		if l := f.live.Load(); l != nil {
			l.Seen()
		}
		return true
	case <-tx.Done():
	case <-ctx.Done():
	}
	return false
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
// pending on it), OnFlowDeath is called and its subscribers are told. A
// UDP flow is neither evicted nor closed: its socket is the UA's.
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
	var pool *sipmsg.ConnectionPool
	if f.network != "udp" {
		pool = f.m.tp.Pool(f.network)
	}
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
	f.m.reportDeath(f, err, subs)
	// Tell the subscribers before closing, so that a transaction failed by
	// the close below is attributed to the dead flow.
	for _, s := range subs {
		s.flowDead(f, err)
	}
	if f.network != "udp" {
		f.m.drain(f.conn)
		closeSocket(f.conn)
	}
}

// drainWait bounds drain's wait.
const drainWait = time.Second

// drain fails the transactions pending on the dead connection c, as sipgo
// does when a connection closes (TerminateOnConnClose), and waits until
// they released their references (at most drainWait): sipgo's reader
// closes c with Close once it has released its own, setting the count to
// 0, and a transaction releasing after that would take it below zero.
func (m *flowMonitor) drain(c sipmsg.Connection) {
	if m.txl == nil {
		return
	}
	m.txl.OnConnectionClose(c)
	held := 1 + sipmsg.TransportIdleConnection // sipgo's: its reader's and the pool's
	deadline := time.Now().Add(drainWait)
	for c.Ref(0) > held && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// closeSocket ends sipgo's connection c under its reader and leaves its
// reference count alone: relink holds no reference of its own on a flow's
// connection. The read side of the TCP socket under it is shut down, so
// that sipgo's reader reads EOF and cleans up as when the peer closes: the
// transactions pending on c are terminated (TerminateOnConnClose) and
// release their references, then the reader releases its own and closes c.
// Close on c (or the pool's CloseAndDelete) would instead set the count to
// 0 under the reader and those transactions, and each of their releases
// would take it below zero (sipgo's "ref went negative" warning); closing
// the socket itself would make the reader's close fail ("connection pool
// not clean cleanup").
func closeSocket(c sipmsg.Connection) {
	if tcp := tcpUnder(c); tcp != nil && tcp.CloseRead() == nil {
		return
	}
	_ = c.Close()
}

// reportDeath calls OnFlowDeath, on a goroutine of its own.
func (m *flowMonitor) reportDeath(f *flow, err error, subs []flowSub) {
	if m.onDeath == nil {
		return
	}
	ev := FlowDeath{Network: f.network, Local: f.key.local.String(), Remote: f.raddr, Err: err, At: time.Now()}
	for _, s := range subs {
		if t, ok := s.(*Trunk); ok {
			ev.Trunks = append(ev.Trunks, t)
		}
	}
	go m.onDeath(ev)
}

// callWatch is the subscriber of the connections UAConfig.WatchCalls
// watches for the application: their death is reported to OnFlowDeath
// only.
type callWatch struct{}

func (callWatch) flowDead(*flow, error) {}

// watchCall starts watching the connection a read arrived on (WatchCalls),
// if it is one of sipgo's pooled stream connections.
func (m *flowMonitor) watchCall(p sipmsg.TransportReadProps, k flowKey) {
	network := sipmsg.NetworkToLower(p.Transport)
	if network == "udp" || p.RemoteAddr == nil {
		return
	}
	pool := m.tp.Pool(network)
	if pool == nil {
		return
	}
	c := pool.Get(p.RemoteAddr.String())
	if c == nil {
		return
	}
	defer c.TryClose() // Get took a reference
	if l, ok := addrPort(c.LocalAddr()); !ok || l != k.local {
		return
	}
	m.attach(c, network, callWatch{}, m.callPref)
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
