//go:build linux

package sip

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// TestHalfOpenKamailio: Kamailio in one network namespace, the trunks in
// another, the path black-holed with nft DROP (no FIN, no RST), for each
// of TCP, TLS, WS and WSS. Every trunk detects the silent flow within its
// bound (keepalive 1 s + timeout 2 s, p99 over 10 trunks ≤ bound + 100 ms),
// the dead connection leaves sipgo's pool, and when the path returns every
// trunk re-registers on a new connection with no manual action.
func TestHalfOpenKamailio(t *testing.T) {
	kamailio.Require(t)
	netns.Require(t)
	for _, tp := range []string{"tcp", "tls", "ws", "wss"} {
		t.Run(tp, func(t *testing.T) { testHalfOpen(t, tp) })
	}
}

// kamTarget returns the registrar URI and address of k for transport tp.
func kamTarget(k *kamailio.Instance, tp string) (uri, addr string) {
	switch tp {
	case "tls":
		return "sip:" + k.TLSAddr() + ";transport=tls", k.TLSAddr()
	case "ws":
		return k.WSURI(), k.WSAddr()
	case "wss":
		return "sip:" + k.WSSAddr() + ";transport=wss", k.WSSAddr()
	}
	return k.URI(), k.Addr()
}

func testHalfOpen(t *testing.T, tp string) {
	p := netns.ForTest(t)
	k := kamailio.Start(t, kamailio.Options{Netns: p.Server().Name(),
		Addr: net.JoinHostPort(netns.ServerIP.String(), "0"), TLS: true, WebSocket: true})
	uri, addr := kamTarget(k, tp)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)

	const n = 10
	const ka, kto = time.Second, 2 * time.Second
	ev := make(deathEvents, 64)
	ua := newSecureUA(t, k, UAConfig{OnFlowDeath: ev.add})
	gate := backoff.NewGate(backoff.GateConfig{Destination: addr})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	trunks := make([]*Trunk, n)
	chs := make([]*changes, n)
	for i := range n {
		chs[i] = &changes{}
		tr, err := NewTrunk(ua, TrunkConfig{
			Registrars: []string{uri}, AOR: fmt.Sprintf("sip:h%d@relink.test", i),
			Password: k.Password(), KeepAlive: ka, KeepAliveTimeout: kto,
			RequestTimeout: 2 * time.Second, Gate: gate, OnStateChange: chs[i].add,
		})
		if err != nil {
			t.Fatal(err)
		}
		trunks[i] = tr
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The trunk's goroutine dials sipgo's connections: it runs on
			// a thread in the client namespace.
			_ = p.Client().Do(func() error { return tr.Run(ctx) })
		}()
	}
	for _, tr := range trunks {
		waitState(t, tr, Registered, 10*time.Second)
	}
	pool := ua.UserAgent().TransportLayer().Pool(tp)
	old := pool.Get(addr)
	if old == nil {
		t.Fatalf("no pooled %s connection to Kamailio", tp)
	}
	old.TryClose()
	checkKernelOptions(t, old, tp)
	time.Sleep(2500 * time.Millisecond) // pings and pongs flow

	restore, err := p.BlackHole(port)
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	var worst time.Duration
	for i, tr := range trunks {
		waitState(t, tr, Registering, 5*time.Second)
		d := chs[i].nth(t, Registering, 2).At.Sub(cut)
		worst = max(worst, d)
	}
	t.Logf("%s: every trunk detected the black hole within %v (bound %v)", tp, worst, ka+kto)
	if bound := ka + kto + 100*time.Millisecond; worst > bound {
		t.Errorf("%s: detection took %v, want ≤ %v", tp, worst, bound)
	}
	if c := pool.Get(addr); c == old {
		t.Error("the dead connection is still in sipgo's pool")
	} else if c != nil {
		c.TryClose()
	}
	if fd := ev.first(t, time.Second); fd.Network != tp || fd.Remote != addr || len(fd.Trunks) != n {
		t.Errorf("OnFlowDeath %s to %s with %d trunks, want %s to %s with %d", fd.Network, fd.Remote, len(fd.Trunks), tp, addr, n)
	}
	time.Sleep(3 * time.Second) // the gate closes and scouts into the hole
	if s := gate.State(); s != backoff.GateClosed {
		t.Errorf("gate %v during the black hole, want closed", s)
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, tr := range trunks {
		waitState(t, tr, Registered, 15*time.Second)
	}
	t.Logf("%s: every trunk re-registered %v after the path returned", tp, time.Since(back))
	c := pool.Get(addr)
	if c == nil || c == old {
		t.Errorf("not re-registered on a new connection")
	}
	if c != nil {
		c.TryClose()
	}
	st, err := k.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Contacts != n {
		t.Errorf("%d contacts at Kamailio, want %d (old ones replaced)", st.Contacts, n)
	}
}

// newSecureUA is newTestUA trusting k's CA, with the fields of cfg if
// given.
func newSecureUA(t testing.TB, k *kamailio.Instance, cfgs ...UAConfig) *UA {
	t.Helper()
	var cfg UAConfig
	if len(cfgs) > 0 {
		cfg = cfgs[0]
	}
	cfg.TransportLayerOptions = []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(discard)}
	cfg.TransactionLayerOptions = []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(discard)}
	if ca := k.CA(); ca != nil {
		cfg.TLSConfig = &tls.Config{RootCAs: ca.Pool()}
	}
	ua, err := NewUA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	return ua
}

// checkKernelOptions fails the test unless the TCP connection under c has
// the UA's default kernel options: keepalive on, TCP_USER_TIMEOUT 15 s.
func checkKernelOptions(t *testing.T, c any, tp string) {
	t.Helper()
	tcp := tcpUnder(c)
	if tcp == nil {
		t.Fatalf("%s: no TCP connection under %T", tp, c)
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ka, ut int
	var kaErr, utErr error
	if err := rc.Control(func(fd uintptr) {
		ka, kaErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		ut, utErr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil || kaErr != nil || utErr != nil {
		t.Fatal(err, kaErr, utErr)
	}
	if ka != 1 || time.Duration(ut)*time.Millisecond != conn.DefaultUserTimeout {
		t.Errorf("%s: SO_KEEPALIVE %d, TCP_USER_TIMEOUT %d ms; want 1 and %v", tp, ka, ut, conn.DefaultUserTimeout)
	}
}
