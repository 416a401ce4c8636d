package sip

import (
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
)

// TestKamailioTransportsSteady: a trunk over each of TCP, TLS, WS and WSS
// registers with Kamailio and keeps its flow through many pings (500 ms
// keepalive): no flow is declared dead, no REGISTER beyond the first
// exchange. (The WS ping was masked in place by sipgo's WS transport, so
// the second ping on a WS flow was garbage and every WS flow died at its
// second probe.)
func TestKamailioTransportsSteady(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{TLS: true, WebSocket: true})
	for _, tp := range []string{"tcp", "tls", "ws", "wss"} {
		t.Run(tp, func(t *testing.T) {
			ua := newSecureUA(t, k)
			uri, _ := kamTarget(k, tp)
			tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{uri}, AOR: "sip:steady-" + tp + "@relink.test",
				Password: k.Password(), KeepAlive: 500 * time.Millisecond, KeepAliveTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			stop := running(t, tr)
			waitState(t, tr, Registered, 5*time.Second)
			if ua.mon.flows() != 1 {
				t.Fatalf("%d flows watched, want 1", ua.mon.flows())
			}
			sent := tr.Transactions()
			time.Sleep(4 * time.Second)
			if d := ua.mon.deaths.Load(); d != 0 || tr.State() != Registered || tr.Transactions() != sent {
				t.Errorf("%s: %d flow deaths, state %v, %d REGISTERs after the first exchange; want 0, registered, 0",
					tp, d, tr.State(), tr.Transactions()-sent)
			}
			stop()
		})
	}
}
