package sip

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/liveness"
	"github.com/relinkgo/relink/internal/registrar"
)

// TestFlowDeath: a flow that stops answering pings is declared dead within
// KeepAlive + KeepAliveTimeout, leaves sipgo's pool, the REGISTER pending on
// it fails at once (not after RequestTimeout), and the trunk re-registers on
// a new connection when the registrar answers again.
func TestFlowDeath(t *testing.T) {
	const ka, kto = pingedKA, pingedKTO
	reg, ua, tr, ch := pingedTrunk(t, 10*time.Second)
	pool := ua.UserAgent().TransportLayer().Pool("tcp")
	raddr := reg.Addr()
	old := pool.Get(raddr)
	if old == nil {
		t.Fatal("no pooled connection to the registrar")
	}
	old.TryClose()
	time.Sleep(3 * ka) // a few pings answered
	if st := reg.Stats(); st.Pings == 0 {
		t.Fatal("no CRLF ping reached the registrar")
	}
	if tr.State() != Registered {
		t.Fatalf("state %v while pongs arrive", tr.State())
	}

	silent := time.Now()
	reg.SetSilent(true)
	waitState(t, tr, Registering, 5*time.Second)
	detect := time.Since(silent)
	t.Logf("detected a silent flow in %v (bound %v)", detect, ka+kto)
	if detect > ka+kto+200*time.Millisecond {
		t.Errorf("detection took %v, want ≤ %v + 200 ms", detect, ka+kto)
	}
	sc := ch.nth(t, Registering, 2)
	var ne interface{ Timeout() bool }
	if !errors.Is(sc.Err, ErrFlowDead) || !errors.Is(sc.Err, liveness.ErrNoResponse) ||
		!errors.As(sc.Err, &ne) || !ne.Timeout() {
		t.Errorf("err %v, want ErrFlowDead (timeout)", sc.Err)
	}
	if c := pool.Get(raddr); c == old {
		t.Error("the dead connection is still in sipgo's pool")
	} else if c != nil {
		c.TryClose()
	}

	// The re-REGISTER on a new connection is met with silence too; its
	// flow dies in turn and the transaction fails long before the 10 s
	// RequestTimeout.
	waitState(t, tr, Backoff, 3*time.Second)
	if sc := ch.lastTo(t, Backoff); !errors.Is(sc.Err, ErrFlowDead) {
		t.Errorf("attempt on a silent flow failed with %v, want ErrFlowDead", sc.Err)
	}
	if d := time.Since(silent); d > 3*(ka+kto)+time.Second {
		t.Errorf("pending REGISTER failed %v after silence, want fast (RequestTimeout is 10 s)", d)
	}

	reg.SetSilent(false)
	// Generous: each failed attempt during the silence doubled the trunk's
	// backoff (full jitter from 500 ms), and a loaded CI host fits more of
	// them in before the silence ends (seen: still in Backoff after 5 s).
	waitState(t, tr, Registered, 20*time.Second)
	if st := reg.Stats(); st.Accepted < 2 {
		t.Errorf("%d connections accepted, want a new one", st.Accepted)
	}
	if n := reg.Stats().Bindings; n != 1 {
		t.Errorf("%d bindings", n)
	}
}

// TestFlowShared: trunks on one UA share one connection and one ping per
// interval; when it dies, all of them re-register through the gate on one
// new connection.
func TestFlowShared(t *testing.T) {
	const n = 20
	const ka, kto = 200 * time.Millisecond, 300 * time.Millisecond
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ua := newTestUA(t)
	gate := backoff.NewGate(backoff.GateConfig{})
	var trunks []*Trunk
	for i := range n {
		tr, err := NewTrunk(ua, TrunkConfig{
			Registrars: []string{reg.URI()}, AOR: fmt.Sprintf("sip:u%d@relink.test", i),
			Password: testPassword, KeepAlive: ka, KeepAliveTimeout: kto, Gate: gate,
		})
		if err != nil {
			t.Fatal(err)
		}
		running(t, tr)
		trunks = append(trunks, tr)
	}
	for _, tr := range trunks {
		waitState(t, tr, Registered, 5*time.Second)
	}
	mon := ua.mon
	if f := mon.flows(); f != 1 {
		t.Errorf("%d flows watched, want 1", f)
	}
	p0 := reg.Stats().Pings
	time.Sleep(time.Second)
	pings := reg.Stats().Pings - p0
	t.Logf("%d pings in 1 s for %d trunks (interval %v)", pings, n, ka)
	if pings < 3 || pings > 7 {
		t.Errorf("%d pings in 1 s, want one per %v–%v for the connection", pings, ka*8/10, ka)
	}

	reg.SetSilent(true)
	for _, tr := range trunks {
		waitState(t, tr, Registering, 3*time.Second)
	}
	if d := mon.deaths.Load(); d != 1 {
		t.Errorf("%d flow deaths, want 1", d)
	}
	reg.SetSilent(false)
	for _, tr := range trunks {
		waitState(t, tr, Registered, 10*time.Second)
	}
	st := reg.Stats()
	if st.Accepted != 2 && st.Accepted != 3 {
		t.Errorf("%d connections accepted, want the first and one or two new", st.Accepted)
	}
	if st.Bindings != n {
		t.Errorf("%d bindings, want %d", st.Bindings, n)
	}
}

// TestFlowClosedByPeer: a connection the registrar closes (FIN) is noticed at
// the next probe and the trunk re-registers on a new one.
func TestFlowClosedByPeer(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	tr, ch := trunkOn(t, TrunkConfig{KeepAlive: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	reg.CloseConnections()
	waitState(t, tr, Registering, 2*time.Second)
	if sc := ch.nth(t, Registering, 2); !errors.Is(sc.Err, ErrFlowDead) {
		t.Errorf("err %v, want ErrFlowDead", sc.Err)
	}
	waitState(t, tr, Registered, 5*time.Second)
	if st := reg.Stats(); st.Accepted != 2 {
		t.Errorf("%d connections accepted, want 2", st.Accepted)
	}
}

// TestQualifyUDP: over UDP, a failed OPTIONS qualify is a dead flow.
func TestQualifyUDP(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	tr, ch := trunkOn(t, TrunkConfig{Qualify: 200 * time.Millisecond, RequestTimeout: 300 * time.Millisecond}, reg.UDPURI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 2*time.Second, "OPTIONS qualifies", func() bool { return reg.Stats().Options >= 2 })
	if tr.State() != Registered {
		t.Fatalf("state %v while qualifies are answered", tr.State())
	}
	reg.SetSilent(true)
	waitState(t, tr, Registering, 2*time.Second)
	if sc := ch.nth(t, Registering, 2); !errors.Is(sc.Err, ErrFlowDead) {
		t.Errorf("err %v, want ErrFlowDead", sc.Err)
	}
	reg.SetSilent(false)
	waitState(t, tr, Registered, 5*time.Second)
}

// TestForeignUA: a UserAgent not made by NewUA is probed with OPTIONS; a
// silent registrar is still detected.
func TestForeignUA(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ua := newForeignUA(t)
	var ch changes
	tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{reg.URI()}, AOR: "sip:alice@relink.test",
		Password: testPassword, KeepAlive: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond,
		OnStateChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	if ua.mon.watchReads {
		t.Fatal("a foreign UA's monitor claims to see reads")
	}
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 2*time.Second, "OPTIONS probes", func() bool { return reg.Stats().Options >= 2 })
	if tr.State() != Registered {
		t.Fatalf("state %v while probes are answered", tr.State())
	}
	reg.SetSilent(true)
	waitState(t, tr, Registering, 2*time.Second)
	reg.SetSilent(false)
	waitState(t, tr, Registered, 5*time.Second)
}

// TestLogsHaveNoSecrets: at Debug, through challenges, refreshes, failures
// and unregistration, the log never contains the password or credentials.
func TestLogsHaveNoSecrets(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: 2 * time.Second,
		NonceLifetime: 500 * time.Millisecond})
	tr, _ := trunkOn(t, TrunkConfig{Logger: log, Expires: time.Second}, reg.URI())
	stop := running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	time.Sleep(2 * time.Second) // refreshes, stale nonces
	reg.SetFault(registrar.Fault{Code: 403, Times: 1})
	time.Sleep(2 * time.Second)
	stop()
	// A second trunk with a wrong password.
	bad, _ := trunkOn(t, TrunkConfig{Logger: log, Password: "wr0ng-" + testPassword}, reg.URI())
	stopBad := running(t, bad)
	waitState(t, bad, Failed, 5*time.Second)
	stopBad()

	out := buf.String()
	if !strings.Contains(out, "sip trunk state") || !strings.Contains(out, "sip response") {
		t.Fatalf("log lacks the expected records:\n%s", out)
	}
	for _, secret := range []string{testPassword, "Authorization", "Digest", "response=", "nonce"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
}

// TestFlowTimer: a registrar's Flow-Timer shorter than KeepAlive sets the
// ping interval (80–100 % of it).
func TestFlowTimer(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, FlowTimer: time.Second})
	tr, _ := trunkOn(t, TrunkConfig{}, reg.URI()) // KeepAlive 10 s by default
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	p0 := reg.Stats().Pings
	time.Sleep(3200 * time.Millisecond)
	if n := reg.Stats().Pings - p0; n < 3 || n > 5 {
		t.Errorf("%d pings in 3.2 s with Flow-Timer 1 s, want 3–4", n)
	}
}

// TestRefreshDelay: refreshes land between 75 % and 85 % of the grant.
func TestRefreshDelay(t *testing.T) {
	lo, hi := time.Hour, time.Duration(0)
	for range 10000 {
		d := refreshDelay(time.Hour)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 45*time.Minute || hi > 51*time.Minute || hi-lo < 5*time.Minute {
		t.Errorf("refresh delays of a 1 h grant span [%v, %v], want most of [45m, 51m]", lo, hi)
	}
}
