package sip

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/kamailio"
)

// plainUA is a UA with the system roots only (it trusts no test CA).
func plainUA(t testing.TB, cfg UAConfig) *UA {
	t.Helper()
	cfg.TransportLayerOptions = []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(discard)}
	cfg.TransactionLayerOptions = []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(discard)}
	ua, err := NewUA(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	return ua
}

// TestKamailioRejectedCertificate: a TLS and a WSS trunk whose
// certificate check fails (Kamailio's certificate is signed by a CA the
// trunk does not trust) are Failed with ErrTLSConfig naming the
// registrar's address, and retry no faster than SlowRetry.
func TestKamailioRejectedCertificate(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{TLS: true, WebSocket: true})
	for _, tp := range []string{"tls", "wss"} {
		t.Run(tp, func(t *testing.T) {
			uri, addr := kamTarget(k, tp)
			ch := &changes{}
			tr, err := NewTrunk(plainUA(t, UAConfig{}), TrunkConfig{Registrars: []string{uri},
				AOR: "sip:rejected@relink.test", Password: k.Password(), SlowRetry: time.Second,
				OnStateChange: ch.add})
			if err != nil {
				t.Fatal(err)
			}
			running(t, tr)
			waitState(t, tr, Failed, 5*time.Second)
			sc := ch.lastTo(t, Failed)
			if !errors.Is(sc.Err, ErrTLSConfig) || !strings.Contains(sc.Err.Error(), addr) {
				t.Fatalf("error %v, want ErrTLSConfig naming %s", sc.Err, addr)
			}
			start := time.Now()
			n0 := len(ch.all(Registering))
			time.Sleep(3500 * time.Millisecond)
			tries := len(ch.all(Registering)) - n0
			if max := int(time.Since(start)/time.Second) + 1; tries > max {
				t.Errorf("%d attempts in %v with SlowRetry 1 s, want ≤ %d", tries, time.Since(start), max)
			}
			if st := kamStats(t, k); st.Registers != 0 {
				t.Errorf("%d REGISTERs reached Kamailio over a rejected certificate", st.Registers)
			}
			t.Logf("%s: %v; %d attempts in 3.5 s", tp, sc.Err, tries)
		})
	}
}

// TestKamailioTrunkTLSConfig: the UA trusts no test CA; each trunk brings
// its own TLSConfig (its carrier's roots and client certificate), and
// Kamailio requires a client certificate of its CA. A trunk with its
// carrier's configuration registers over TLS; a trunk at another carrier
// with no configuration of its own is refused (Failed, ErrTLSConfig): one
// UA, a configuration per carrier.
func TestKamailioTrunkTLSConfig(t *testing.T) {
	a := kamailio.Start(t, kamailio.Options{TLS: true, RequireClientCert: true})
	b := kamailio.Start(t, kamailio.Options{TLS: true})
	cert, err := a.CA().Issue("carrier-a-trunk")
	if err != nil {
		t.Fatal(err)
	}
	ua := plainUA(t, UAConfig{})
	uriA, _ := kamTarget(a, "tls")
	uriB, addrB := kamTarget(b, "tls")
	chA := &changes{}
	ta, err := NewTrunk(ua, TrunkConfig{Registrars: []string{uriA}, AOR: "sip:carrier-a@relink.test", OnStateChange: chA.add,
		Password: a.Password(), TLSConfig: &tls.Config{RootCAs: a.CA().Pool(), Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	chB := &changes{}
	tb, err := NewTrunk(ua, TrunkConfig{Registrars: []string{uriB}, AOR: "sip:carrier-b@relink.test",
		Password: b.Password(), SlowRetry: time.Minute, OnStateChange: chB.add})
	if err != nil {
		t.Fatal(err)
	}
	running(t, ta)
	running(t, tb)
	waitState(t, ta, Registered, 5*time.Second)
	waitState(t, tb, Failed, 5*time.Second)
	if err := chB.lastTo(t, Failed).Err; !errors.Is(err, ErrTLSConfig) || !strings.Contains(err.Error(), addrB) {
		t.Errorf("carrier b: %v, want ErrTLSConfig naming %s", err, addrB)
	}
	if c, _ := a.Contacts("carrier-a"); len(c) != 1 {
		t.Errorf("carrier a contacts %+v, want 1", c)
	}
}

// TestKamailioTrunkWSSClientCert: a WSS trunk's client certificate comes
// from its own TLSConfig too (sipgo's WSS handshake has no context: relink
// picks the one trunk configuration whose certificate's CA Kamailio asks
// for), on a UA with no certificate of its own.
func TestKamailioTrunkWSSClientCert(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{TLS: true, WebSocket: true, RequireClientCert: true})
	cert, err := k.CA().Issue("carrier-wss-trunk")
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := kamTarget(k, "wss")
	tr, err := NewTrunk(plainUA(t, UAConfig{}), TrunkConfig{Registrars: []string{uri}, AOR: "sip:wss-cert@relink.test",
		Password: k.Password(), TLSConfig: &tls.Config{RootCAs: k.CA().Pool(), Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
}
