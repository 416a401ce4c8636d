//go:build linux

package sip

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// TestHalfOpenKamailio: Kamailio in one network namespace, the trunks in
// another, the path black-holed with nft DROP (no FIN, no RST). Every trunk
// detects the silent flow within its bound (keepalive 1 s + timeout 2 s), the
// dead connection leaves sipgo's pool, and when the path returns every trunk
// re-registers on a new connection with no manual action.
func TestHalfOpenKamailio(t *testing.T) {
	kamailio.Require(t)
	p := netns.ForTest(t)
	k := kamailio.Start(t, kamailio.Options{Netns: p.Server().Name(),
		Addr: net.JoinHostPort(netns.ServerIP.String(), "0")})
	_, portStr, _ := net.SplitHostPort(k.Addr())
	port, _ := strconv.Atoi(portStr)

	const n = 10
	const ka, kto = time.Second, 2 * time.Second
	ua := newTestUA(t)
	gate := backoff.NewGate(backoff.GateConfig{Destination: k.Addr()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	trunks := make([]*Trunk, n)
	chs := make([]*changes, n)
	for i := range n {
		chs[i] = &changes{}
		tr, err := NewTrunk(ua, TrunkConfig{
			Registrars: []string{k.URI()}, AOR: fmt.Sprintf("sip:h%d@relink.test", i),
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
	pool := ua.UserAgent().TransportLayer().Pool("tcp")
	old := pool.Get(k.Addr())
	if old == nil {
		t.Fatal("no pooled connection to Kamailio")
	}
	old.TryClose()
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
	t.Logf("every trunk detected the black hole within %v (bound %v)", worst, ka+kto)
	if worst > 3500*time.Millisecond {
		t.Errorf("detection took %v, want ≤ 3.5 s", worst)
	}
	if c := pool.Get(k.Addr()); c == old {
		t.Error("the dead connection is still in sipgo's pool")
	} else if c != nil {
		c.TryClose()
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
	t.Logf("every trunk re-registered %v after the path returned", time.Since(back))
	c := pool.Get(k.Addr())
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
