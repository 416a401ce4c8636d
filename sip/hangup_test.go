package sip

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/registrar"
)

// TestPeerHangupSeenAtOnce: a registrar that resets (RST) or closes (FIN)
// the TCP flow is noticed at once, not at the flow's next probe: with a
// 10 s KeepAlive the trunk leaves Registered within 2 s (well under 10 s;
// Linux: the kernel's notice through epoll, elsewhere the probe), and
// registers again on a new connection. (Before: up to 10 s claiming
// Registered on a dead flow; the faults rows peer-rst and peer-fin
// measured 0.67-0.70 s with a 1 s KeepAlive, i.e. the probe.)
func TestPeerHangupSeenAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hang  func(*faultproxy.Proxy)
		cause error
	}{
		{name: "rst", hang: (*faultproxy.Proxy).Reset, cause: syscall.ECONNRESET},
		{name: "fin", hang: (*faultproxy.Proxy).CloseAll, cause: io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
			px, err := faultproxy.New(reg.Addr())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { px.Close() })
			var deaths []FlowDeath
			died := make(chan FlowDeath, 4)
			ua, err := NewUA(UAConfig{OnFlowDeath: func(d FlowDeath) { died <- d },
				TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(discard)},
				TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(discard)}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ua.Close() })
			ch := new(changes)
			tr, err := NewTrunk(ua, TrunkConfig{
				Registrars: []string{fmt.Sprintf("sip:%s;transport=tcp", px.Addr())},
				AOR:        "sip:alice@relink.test", Password: testPassword, Expires: time.Hour,
				KeepAlive: 10 * time.Second, OnStateChange: ch.add,
			})
			if err != nil {
				t.Fatal(err)
			}
			running(t, tr)
			waitState(t, tr, Registered, 5*time.Second)
			time.Sleep(100 * time.Millisecond)

			cut := time.Now()
			tc.hang(px)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if !tr.WaitForStateChange(ctx, Registered) {
				t.Fatalf("still Registered 2 s after the peer's %s (KeepAlive 10 s)", tc.name)
			}
			took := time.Since(cut)
			select {
			case d := <-died:
				deaths = append(deaths, d)
			case <-time.After(2 * time.Second):
				t.Fatal("OnFlowDeath not called")
			}
			t.Logf("left Registered %v after the %s; flow death: %v", took, tc.name, deaths[0].Err)
			if !errors.Is(deaths[0].Err, tc.cause) {
				t.Errorf("flow death %v, want one caused by %v", deaths[0].Err, tc.cause)
			}
			waitState(t, tr, Registered, 5*time.Second)
			if n := reg.Stats().Accepted; n < 2 {
				t.Errorf("%d connections through the proxy, want a new one", n)
			}
		})
	}
}

// TestPeerHangupKamailio: the same over each of TCP, TLS, WS and WSS to a
// real Kamailio, its connections reset (RST) by a proxy in front of it:
// with a 10 s KeepAlive every trunk leaves Registered within 2 s and
// registers again on a new connection. (Before: at the next probe, up to
// 10 s.)
func TestPeerHangupKamailio(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{TLS: true, WebSocket: true})
	for _, tp := range []string{"tcp", "tls", "ws", "wss"} {
		t.Run(tp, func(t *testing.T) {
			uri, addr := kamTarget(k, tp)
			px, err := faultproxy.New(addr)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { px.Close() })
			uri = strings.Replace(uri, addr, px.Addr(), 1)
			ua := newSecureUA(t, k)
			tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{uri}, AOR: "sip:hangup-" + tp + "@relink.test",
				Password: k.Password(), KeepAlive: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			running(t, tr)
			waitState(t, tr, Registered, 5*time.Second)
			cut := time.Now()
			px.Reset()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if !tr.WaitForStateChange(ctx, Registered) {
				t.Fatalf("%s: still Registered 2 s after the reset (KeepAlive 10 s)", tp)
			}
			t.Logf("%s: left Registered %v after the reset", tp, time.Since(cut))
			waitState(t, tr, Registered, 5*time.Second)
			if d := ua.mon.deaths.Load(); d != 1 {
				t.Errorf("%s: %d flow deaths, want 1", tp, d)
			}
		})
	}
}
