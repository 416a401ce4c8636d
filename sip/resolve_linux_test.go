//go:build linux

package sip

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/dnstest"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/registrar"
)

// srvRegistrar is a registrar the SRV test starts at one target's port in
// the server namespace, and asks for the bindings of a user.
type srvRegistrar interface {
	bindings(t *testing.T, user string) int
}

type embeddedSRV struct{ r *registrar.Registrar }

func (e embeddedSRV) bindings(_ *testing.T, user string) int {
	return len(e.r.Bindings("sip:" + user + "@relink.test"))
}

type kamailioSRV struct{ k *kamailio.Instance }

func (k kamailioSRV) bindings(t *testing.T, user string) int {
	c, err := k.k.Contacts(user)
	if err != nil {
		t.Error(err)
	}
	return len(c)
}

// TestSRVFailover: a registrar given by name, its SRV records (a real
// dnsmasq in the server's network namespace) naming two targets, each a
// registrar (the embedded one, and a real Kamailio). Every trunk registers
// on the first; the first is black-holed (nft DROP: no FIN, no RST) and
// every trunk is registered on the second within the detection bound + 1 s;
// the first returns and every trunk is back on it once FailbackInterval has
// passed, its binding on the second removed.
func TestSRVFailover(t *testing.T) {
	dnstest.Require(t)
	for _, kind := range []string{"embedded", "kamailio"} {
		t.Run(kind, func(t *testing.T) { testSRVFailover(t, kind) })
	}
}

func startSRVRegistrar(t *testing.T, p *netns.Pair, kind string, port int) srvRegistrar {
	addr := fmt.Sprintf("%s:%d", netns.ServerIP, port)
	if kind == "kamailio" {
		return kamailioSRV{kamailio.Start(t, kamailio.Options{Netns: p.Server().Name(), Addr: addr,
			MinExpires: -1, Password: testPassword})}
	}
	var r *registrar.Registrar
	if err := p.Server().Do(func() (err error) {
		r, err = registrar.New(registrar.Config{Addr: addr, Logger: discard, MinExpires: -1, Password: testPassword})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return embeddedSRV{r}
}

func testSRVFailover(t *testing.T, kind string) {
	if kind == "kamailio" {
		kamailio.Require(t)
	}
	p := netns.ForTest(t)
	ip := netns.ServerIP.String()
	dns := dnstest.Start(t, dnstest.Options{Netns: p.Server().Name(), Addr: ip, Domain: "test",
		SRV: []dnstest.SRV{
			{Name: "_sip._tcp.registrar.test", Target: "a.registrar.test", Port: 5071, Priority: 10, Weight: 10},
			{Name: "_sip._tcp.registrar.test", Target: "b.registrar.test", Port: 5072, Priority: 20, Weight: 10},
		},
		Hosts: []dnstest.Host{{Name: "a.registrar.test", IP: ip}, {Name: "b.registrar.test", IP: ip}},
	})
	regs := []srvRegistrar{startSRVRegistrar(t, p, kind, 5071), startSRVRegistrar(t, p, kind, 5072)}
	resolver := dns.Resolver(func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = p.Client().Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	})

	const n = 5
	const ka, kto, failback = time.Second, time.Second, 3 * time.Second
	ua := newTestUA(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	trunks := make([]*Trunk, n)
	chs := make([]*changes, n)
	for i := range n {
		chs[i] = &changes{}
		tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{"sip:registrar.test;transport=tcp"},
			AOR: fmt.Sprintf("sip:s%d@relink.test", i), Password: testPassword, Resolver: resolver,
			KeepAlive: ka, KeepAliveTimeout: kto, RequestTimeout: 2 * time.Second,
			FailbackInterval: failback, OnStateChange: chs[i].add})
		if err != nil {
			t.Fatal(err)
		}
		trunks[i] = tr
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Run's goroutine dials sipgo's connections: in the client namespace.
			_ = p.Client().Do(func() error { return tr.Run(ctx) })
		}()
	}
	on := func(tr *Trunk, port string) bool {
		return tr.State() == Registered && strings.Contains(tr.Registrar(), ":"+port)
	}
	for _, tr := range trunks {
		waitState(t, tr, Registered, 10*time.Second)
		if !on(tr, "5071") {
			t.Fatalf("registered with %s, want the first SRV target (a:5071)", tr.Registrar())
		}
	}

	restore, err := p.BlackHole(5071)
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	bound := ka + kto + time.Second
	eventually(t, bound+2*time.Second, "every trunk on the second target", func() bool {
		for _, tr := range trunks {
			if !on(tr, "5072") {
				return false
			}
		}
		return true
	})
	var worst time.Duration
	for _, ch := range chs {
		sc := ch.nth(t, Registered, 2)
		if !strings.Contains(sc.Destination, ":5072") {
			t.Errorf("second registration with %s", sc.Destination)
		}
		worst = max(worst, sc.At.Sub(cut))
	}
	t.Logf("every trunk registered on the second target %v after the black hole began (bound %v)", worst, bound)
	if worst > bound {
		t.Errorf("failover took %v, want ≤ %v (detection bound + 1 s)", worst, bound)
	}

	time.Sleep(failback) // failbacks into the black hole fail
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	eventually(t, failback+10*time.Second, "every trunk back on the first target", func() bool {
		for _, tr := range trunks {
			if !on(tr, "5071") {
				return false
			}
		}
		return true
	})
	t.Logf("every trunk back on the first target %v after the path returned (FailbackInterval %v)",
		time.Since(back), failback)
	for i := range n {
		user := fmt.Sprintf("s%d", i)
		if b := regs[1].bindings(t, user); b != 0 {
			t.Errorf("%s: %d bindings left on the second target after failback", user, b)
		}
		if b := regs[0].bindings(t, user); b != 1 {
			t.Errorf("%s: %d bindings on the first target, want 1", user, b)
		}
	}
}
