package main

import (
	"context"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
	rsip "github.com/relinkgo/relink/sip"
)

// rows is the matrix, in issue 14's order.
var rows = []row{
	{name: "blackhole-idle", about: "the path goes silent (no FIN, no RST); Links idle", run: blackHole(false)},
	{name: "blackhole-busy", about: "the path goes silent while Links echo every 50 ms", run: blackHole(true)},
	{name: "peer-rst", about: "every connection reset by the far end", run: abrupt("rst")},
	{name: "peer-fin", about: "every connection closed by the far end (FIN)", run: abrupt("fin")},
	{name: "registrar-restart", about: "the registrar restarts: bindings, nonces and their secret lost", run: registrarRestart},
	{name: "503-storm", about: "all trunks re-register at once into a registrar of capacity trunks/4 per s, 503 Retry-After 5 s", run: storm},
	{name: "503-absurd-retry-after", about: "503 with Retry-After 10^12 s for 3 s, the fleet's gate capped at 10 s", run: absurdRetryAfter},
	{name: "failover", about: "registrar 1 goes silent: trunks move to 2, then back to 1 when it returns", run: failover},
	{name: "link-half-close", about: "the Links' peer half-closes (FIN) and keeps reading", run: halfClose},
	{name: "peer-hung", about: "the peers' applications hang with TCP alive (registrar silent, echo reads and discards)", run: hung},
	{name: "registrar-ignores-crlf", about: "Kamailio with CRLF pongs off (kamailio): no flow may die; then its path goes silent", run: crlfDeaf},
	{name: "credentials-fixed", about: "credentials rejected (403), then the registrar's account fixed", run: credentials},
	{name: "stop-mid-register", about: "the fleet stopped while its REGISTERs are in flight (held by a frozen path)", run: stopMidRegister},
	{name: "tls-wss-blackhole", about: "TLS and WSS flows to Kamailio black-holed by nft (root, netns, kamailio)", run: tlsWSS},
	{name: "dns-down-20s", about: "the registrar's name unresolvable for 20 s while its flows die (root, netns, kamailio, dnsmasq)", run: dnsDown},
	{name: "loss-10pct-60s", about: "10 % random loss for -loss-for (60 s) on the SIP and echo ports (root, netns, kamailio)", run: loss},
	{name: "redis-killed", about: "Redis (the fleet's shared gate) SIGKILLed during a fleet recovery (redis-server)", run: redisKilled},
}

// blackHole: with -env netns (auto as root with Kamailio), a real black
// hole (blackHoleNetns); otherwise the proxies freeze (silence both ways) for o.hole, then the old
// connections stay black-holed and new ones go through (ForgetDrop).
func blackHole(busy bool) func(context.Context, *options) (*world, error) {
	return func(ctx context.Context, o *options) (*world, error) {
		if o.useNetns() {
			return blackHoleNetns(ctx, o, busy)
		}
		w, err := sipAndLinks(ctx, o, registrar.Config{}, testkitEcho, busy)
		if err != nil {
			return w, err
		}
		w.bound, w.detect = o.bound(), true
		return w, w.fault(ctx, o.hole(), func() {
			w.eachProxy((*faultproxy.Proxy).Freeze)
		}, func() {
			w.eachProxy((*faultproxy.Proxy).ForgetDrop)
		})
	}
}

// abrupt: every connection reset (RST) or closed (FIN) by the proxies; the
// path works at once for new connections.
func abrupt(how string) func(context.Context, *options) (*world, error) {
	return func(ctx context.Context, o *options) (*world, error) {
		w, err := sipAndLinks(ctx, o, registrar.Config{}, testkitEcho, true)
		if err != nil {
			return w, err
		}
		w.bound, w.detect = o.keepAlive, true
		return w, w.fault(ctx, 0, func() {
			if how == "rst" {
				w.eachProxy((*faultproxy.Proxy).Reset)
				return
			}
			w.eachProxy((*faultproxy.Proxy).CloseAll)
		}, nil)
	}
}

// registrarRestart: the registrar stops (its connections closed) and comes
// back 2 s later on the same address with nothing remembered.
func registrarRestart(ctx context.Context, o *options) (*world, error) {
	w, err := sipOnly(ctx, o, registrar.Config{}, nil, nil)
	if err != nil {
		return w, err
	}
	w.bound, w.detect = o.keepAlive, true
	w.markCut()
	if err := w.regs[0].restart(ctx, 2*time.Second, nil); err != nil {
		return w, err
	}
	return w, w.finish(ctx)
}

// storm: the registrar serves trunks/4 REGISTERs per second and answers the
// excess 503 Retry-After 5 s; every flow is reset, so every trunk
// re-registers at once.
func storm(ctx context.Context, o *options) (*world, error) {
	w, err := sipOnly(ctx, o, registrar.Config{RetryAfter: 5 * time.Second}, nil, nil)
	if err != nil {
		return w, err
	}
	w.capacity = max(float64(o.trunks)/4, 1)
	w.regs[0].r.SetCapacity(w.capacity)
	w.bound, w.detect = o.keepAlive, true
	err = w.fault(ctx, 0, w.regs[0].proxy.Reset, nil)
	return w, err
}

// absurdRetryAfter: for 3 s every request gets 503 with Retry-After
// 1000000000000 (s); the flows are reset so every trunk asks. The fleet's
// gate caps a push-back at 10 s (FleetConfig.Gate.MaxPushBack).
func absurdRetryAfter(ctx context.Context, o *options) (*world, error) {
	w, err := sipOnly(ctx, o, registrar.Config{}, nil, func(fc *rsip.FleetConfig) {
		fc.Gate.MaxPushBack = 10 * time.Second
	})
	if err != nil {
		return w, err
	}
	w.bound, w.detect = o.keepAlive, true
	w.note = "FleetConfig.Gate.MaxPushBack 10 s; "
	reg := w.regs[0].r
	return w, w.fault(ctx, 3*time.Second, func() {
		reg.SetFault(registrar.Fault{Code: 503, Headers: []sip.Header{sip.NewHeader("Retry-After", "1000000000000")}})
		w.regs[0].proxy.Reset()
	}, reg.ClearFaults)
}

// hung: the registrar stops answering anything (pings included) with its
// connections open, and the echo server reads and discards; after o.hole
// the registrar answers again (new connections to the echo server are
// served throughout).
func hung(ctx context.Context, o *options) (*world, error) {
	var echo *testkit.Echo
	w, err := sipAndLinks(ctx, o, registrar.Config{}, func() (echoServer, error) {
		e, err := testkit.ListenEcho("127.0.0.1:0")
		echo = e
		return e, err
	}, false)
	if err != nil {
		return w, err
	}
	w.bound, w.detect = o.bound(), true
	reg := w.regs[0].r
	return w, w.fault(ctx, o.hole(), func() {
		reg.SetSilent(true)
		if echo != nil {
			echo.Hang()
		}
	}, func() { reg.SetSilent(false) })
}

// halfClose: the Links' peer half-closes; a Link must reconnect, and no reply
// sent before the FIN may be lost.
func halfClose(ctx context.Context, o *options) (*world, error) {
	w := newWorld(o)
	h, err := newHalfCloser()
	if err != nil {
		return w, err
	}
	w.links, err = startLinks(ctx, o, h, true, nil)
	if err != nil {
		return w, err
	}
	w.bound, w.detect = o.keepAlive, true
	return w, w.fault(ctx, 0, func() { h.HalfClose() }, nil)
}

// credentials: the registrar knows another password; the trunks are refused
// (403, slow retry 2 s) until the registrar restarts with theirs.
func credentials(ctx context.Context, o *options) (*world, error) {
	w := newWorld(o)
	if _, err := w.addRegistrar(registrar.Config{Password: "rotated"}); err != nil {
		return w, err
	}
	w.markCut()
	if err := w.startFleet(ctx, false, func(tc *rsip.TrunkConfig) { tc.SlowRetry = 2 * time.Second }, nil); err != nil {
		return w, err
	}
	reg := w.regs[0]
	if err := waitFor(ctx, 20*time.Second, "every trunk refused", func() bool {
		return reg.r.Stats().ByStatus[403] >= uint64(o.trunks)
	}); err != nil {
		return w, err
	}
	w.note = "SlowRetry 2 s; "
	if err := reg.restart(ctx, 0, func(c *registrar.Config) { c.Password = password }); err != nil {
		return w, err
	}
	return w, w.finish(ctx)
}

// stopMidRegister: the path is frozen, the fleet starts (its REGISTERs held),
// and is stopped 500 ms later; the path resumes 500 ms after that, so the
// registrar gets each REGISTER and then its unregistration.
func stopMidRegister(ctx context.Context, o *options) (*world, error) {
	w := newWorld(o)
	s, err := w.addRegistrar(registrar.Config{})
	if err != nil {
		return w, err
	}
	s.proxy.Freeze()
	w.markCut()
	if err := w.startFleet(ctx, false, nil, nil); err != nil {
		return w, err
	}
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return w, err
	}
	w.markRestore()
	go func() {
		_ = sleep(ctx, 500*time.Millisecond)
		s.proxy.Resume()
	}()
	w.stop()
	// A REGISTER delivered late may be answered after Run returned: look
	// again once the registrar has had time to answer what was held.
	if err := sleep(ctx, 2*time.Second); err != nil {
		return w, err
	}
	w.countOrphans()
	w.recovered = w.o.trunks - w.stuck
	w.recoverAt = time.Now()
	w.note = "recovered: trunks whose Run returned; "
	return w, nil
}

// failover: registrar 1's path goes silent; the trunks detect it, register
// with registrar 2; when 1 returns they fail back (FailbackInterval 2 s) and
// remove their bindings from 2.
func failover(ctx context.Context, o *options) (*world, error) {
	w := newWorld(o)
	for range 2 {
		if _, err := w.addRegistrar(registrar.Config{}); err != nil {
			return w, err
		}
	}
	if err := w.startFleet(ctx, true, func(tc *rsip.TrunkConfig) { tc.FailbackInterval = 2 * time.Second }, nil); err != nil {
		return w, err
	}
	w.bound, w.detect = o.bound(), true
	w.markCut()
	w.regs[0].proxy.Freeze()
	onBackup := func() int {
		n := 0
		for i, t := range w.trunks {
			if t.State() == rsip.Registered && w.bindings(1, w.aors[i]) > 0 {
				n++
			}
		}
		return n
	}
	start := time.Now()
	err := waitFor(ctx, o.capAfter, "trunks on registrar 2", func() bool { return onBackup() == o.trunks })
	w.note = "on registrar 2 after " + time.Since(start).Round(10*time.Millisecond).String() + "; "
	if err != nil {
		w.note += err.Error() + "; "
	}
	if err := sleep(ctx, time.Second); err != nil {
		return w, err
	}
	w.regs[0].proxy.ForgetDrop()
	w.markRestore()
	w.byPoll = true
	w.recoveredF = func() int {
		n := 0
		for i, t := range w.trunks {
			if w.trunkOK(i, t) && w.bindings(1, w.aors[i]) == 0 {
				n++
			}
		}
		return n
	}
	if err := w.waitRecovered(ctx); err != nil {
		return w, err
	}
	w.stop()
	return w, nil
}
