//go:build linux

package sip

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// TestScoutConnectBounded (issue 10, "a restored path seen within a
// second"): Kamailio black-holed (nft DROP) before the trunks start, one
// trunk per UA (as one per process), for each of tcp, tls, ws and wss. The
// trunks' first REGISTER's connect goes into the hole; each connection
// attempt is abandoned after UAConfig.ConnectTimeout (1 s) and redialled
// with a fresh SYN, so after the path returns (10 s later) every trunk is
// registered about 1 s after it (the slowest of 5; the test allows 2 s,
// internal/bench/restore measures the figure). With the bound off
// (ConnectTimeout: -1) the next SYN comes at the kernel's schedule (1, 3,
// 7, 15 s after the first; 1, 2, 3, 4 ... with tcp_syn_linear_timeouts):
// logged for comparison.
func TestScoutConnectBounded(t *testing.T) {
	kamailio.Require(t)
	netns.Require(t)
	for _, tp := range []string{"tcp", "tls", "ws", "wss"} {
		t.Run(tp, func(t *testing.T) {
			worst := restoreDelay(t, tp, 0, 10*time.Second)
			t.Logf("%s: slowest trunk registered %v after the restore (ConnectTimeout 1 s)", tp, worst)
			// The 1.2 s figure (p99 0.99 s) is internal/bench/restore's; a
			// test's wall clock on a loaded machine gets a generous bound,
			// still below the 3.2 s the kernel's SYN schedule gives.
			if worst > 2*time.Second {
				t.Errorf("%s: registered %v after the restore, want ≤ 2 s (1 s connect bound)", tp, worst)
			}
		})
	}
	t.Run("tcp-unbounded", func(t *testing.T) {
		// 12 s: between two of the kernel's SYN retransmissions (with
		// Linux's default tcp_syn_linear_timeouts=4: 1, 2, 3, 4, 6?, 7, 11,
		// 19 s after the first), as an outage ends at any time.
		t.Logf("tcp: slowest trunk registered %v after the restore with ConnectTimeout off (the kernel's SYN schedule)",
			restoreDelay(t, "tcp", -1, 12*time.Second))
	})
}

// restoreDelay black-holes Kamailio, starts 5 trunks (one per UA) into the
// hole, restores the path after hole and returns how long after the
// restore the last trunk was registered.
func restoreDelay(t *testing.T, tp string, connectTimeout, hole time.Duration) time.Duration {
	p := netns.ForTest(t)
	k := kamailio.Start(t, kamailio.Options{Netns: p.Server().Name(),
		Addr: net.JoinHostPort(netns.ServerIP.String(), "0"), TLS: true, WebSocket: true})
	uri, addr := kamTarget(k, tp)
	_, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portStr)
	restore, err := p.BlackHole(port)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	trunks := make([]*Trunk, n)
	chs := make([]*changes, n)
	for i := range n {
		ua := newSecureUA(t, k)
		ua.mon.connectTimeout = max(connectTimeout, 0)
		if connectTimeout == 0 {
			ua.mon.connectTimeout = DefaultConnectTimeout
		}
		chs[i] = &changes{}
		tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{uri}, AOR: fmt.Sprintf("sip:r%d@relink.test", i),
			Password: k.Password(), OnStateChange: chs[i].add})
		if err != nil {
			t.Fatal(err)
		}
		trunks[i] = tr
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = p.Client().Do(func() error { return tr.Run(ctx) })
		}()
	}
	time.Sleep(hole)
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	var delays []time.Duration
	for i, tr := range trunks {
		waitState(t, tr, Registered, 20*time.Second)
		delays = append(delays, chs[i].lastTo(t, Registered).At.Sub(back))
	}
	slices.Sort(delays)
	t.Logf("%s: registered after the restore: %v", tp, delays)
	return delays[len(delays)-1]
}
