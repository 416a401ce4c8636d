package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/dnstest"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

// skipError reports that a row cannot run here, and why.
type skipError struct{ why string }

func (e *skipError) Error() string { return "skipped: " + e.why }

// needKamailio returns a skipError unless Kamailio is installed (and, with
// ns, network namespaces can be made).
func needKamailio(ns bool) error {
	if err := kamailio.Available(); err != nil {
		return &skipError{"needs Kamailio: " + err.Error()}
	}
	if ns {
		if err := netns.Available(); err != nil {
			return &skipError{"needs network namespaces: " + err.Error()}
		}
	}
	return nil
}

// crlfDeaf: Kamailio with its CRLF pong off, behind a freeze proxy. The
// trunks ping every o.keepAlive for 10 s (no flow may die: relink falls back
// to OPTIONS), then the path goes silent for o.hole + 10 s and must still be
// noticed.
func crlfDeaf(ctx context.Context, o *options) (*world, error) {
	if err := needKamailio(false); err != nil {
		return nil, err
	}
	w := newWorld(o)
	k, err := kamailio.Launch(ctx, kamailio.Options{NoCRLFAnswer: true, Password: password})
	if err != nil {
		return w, err
	}
	p, err := faultproxy.New(k.Addr())
	if err != nil {
		_ = k.Stop()
		return w, err
	}
	s := &regSlot{kam: k, proxy: p}
	s.kamURI = "sip:" + p.Addr() + ";transport=tcp"
	w.regs = append(w.regs, s)
	if err := w.startFleet(ctx, true, nil, nil); err != nil {
		return w, err
	}
	if err := sleep(ctx, 10*time.Second); err != nil {
		return w, err
	}
	w.bound, w.detect, w.env = o.bound(), true, "kamailio+proxy"
	w.note = "Kamailio tcp_crlf_ping=no; 10 s of pings before the cut (relink probes with OPTIONS only, at KeepAlive/KeepAliveTimeout); "
	return w, w.fault(ctx, o.hole()+10*time.Second, p.Freeze, p.ForgetDrop)
}

// kamInNetns starts Kamailio in the server namespace of a new Pair.
func kamInNetns(ctx context.Context, w *world, opts kamailio.Options) (*netns.Pair, *kamailio.Instance, error) {
	p, err := netns.New()
	if err != nil {
		return nil, nil, err
	}
	w.cleanup = append(w.cleanup, func() { _ = p.Close() })
	opts.Netns = p.Server().Name()
	opts.Addr = net.JoinHostPort(netns.ServerIP.String(), "0")
	opts.Password = password
	k, err := kamailio.Launch(ctx, opts)
	if err != nil {
		return p, nil, err
	}
	return p, k, nil
}

// startTrunksIn runs o.trunks trunks, each on a thread of ns (sipgo dials
// from the trunk's goroutine), trunk i registering at uris(i); trunks with
// the same URI share a Gate, as a Fleet's do.
func (w *world) startTrunksIn(ctx context.Context, ns *netns.Namespace, ucfg sip.UAConfig, uris func(int) string, tc func(*sip.TrunkConfig)) error {
	ucfg.OnFlowDeath = w.onFlowDeath
	ua, err := sip.NewUA(ucfg)
	if err != nil {
		return err
	}
	w.ua = ua
	gates := map[string]*backoff.Gate{}
	tctx, cancel := context.WithCancel(ctx)
	w.stopF, w.doneF = cancel, make(chan error, 1)
	var wg sync.WaitGroup
	for i := range w.o.trunks {
		uri := uris(i)
		g := gates[uri]
		if g == nil {
			g = backoff.NewGate(backoff.GateConfig{Destination: uri, MaxPushBack: sip.MaxRetryAfter, Logger: w.o.logger})
			gates[uri] = g
		}
		c := w.trunkConfig(i, []string{uri})
		c.Gate, c.OnStateChange, c.Logger = g, w.onTrunk, w.o.logger
		if tc != nil {
			tc(&c)
		}
		t, err := sip.NewTrunk(ua, c)
		if err != nil {
			cancel()
			return err
		}
		w.trunks = append(w.trunks, t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ns.Do(func() error { return t.Run(tctx) })
		}()
	}
	go func() { wg.Wait(); w.doneF <- nil }()
	return waitFor(ctx, 30*time.Second, "trunks registered", func() bool {
		for _, t := range w.trunks {
			if t.State() != sip.Registered {
				return false
			}
		}
		return true
	})
}

// tlsWSS: half the trunks over TLS, half over WSS, to Kamailio in a network
// namespace; both ports black-holed by nft for o.hole.
func tlsWSS(ctx context.Context, o *options) (*world, error) {
	if err := needKamailio(true); err != nil {
		return nil, err
	}
	w := newWorld(o)
	p, k, err := kamInNetns(ctx, w, kamailio.Options{TLS: true, WebSocket: true})
	if err != nil {
		return w, err
	}
	w.regs = append(w.regs, &regSlot{kam: k})
	w.env = "netns+kamailio"
	uris := [2]string{"sip:" + k.TLSAddr() + ";transport=tls", "sip:" + k.WSSAddr() + ";transport=wss"}
	err = w.startTrunksIn(ctx, p.Client(), sip.UAConfig{TLSConfig: &tls.Config{RootCAs: k.CA().Pool()}},
		func(i int) string { return uris[i%2] }, nil)
	if err != nil {
		return w, err
	}
	var restores []func() error
	defer func() {
		for _, r := range restores {
			_ = r()
		}
	}()
	w.bound, w.detect = o.bound(), true
	w.note = "half the trunks over TLS, half over WSS; nft black hole on both ports; "
	var holeErr error
	err = w.fault(ctx, o.hole(), func() {
		for _, a := range []string{k.TLSAddr(), k.WSSAddr()} {
			r, err := p.BlackHole(portOf(a))
			if err != nil {
				holeErr = errors.Join(holeErr, err)
				continue
			}
			restores = append(restores, r)
		}
	}, func() {
		for _, r := range restores {
			holeErr = errors.Join(holeErr, r())
		}
		restores = nil
	})
	return w, errors.Join(err, holeErr)
}

func portOf(addr string) int {
	_, ps, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(ps)
	return port
}

// loss: 10 % of the packets to and from Kamailio's port and the echo
// server's port dropped at random for o.lossFor, trunks and busy Links
// running over it; any flow declared dead meanwhile is a false death (the
// path still delivers).
func loss(ctx context.Context, o *options) (*world, error) {
	if err := needKamailio(true); err != nil {
		return nil, err
	}
	w := newWorld(o)
	p, k, err := kamInNetns(ctx, w, kamailio.Options{})
	if err != nil {
		return w, err
	}
	w.regs = append(w.regs, &regSlot{kam: k})
	w.env = "netns+kamailio"
	if err := w.startTrunksIn(ctx, p.Client(), sip.UAConfig{}, func(int) string { return k.URI() }, nil); err != nil {
		return w, err
	}
	ln, err := p.ListenTCP(0)
	if err != nil {
		return w, err
	}
	echo := testkit.ServeEcho(ln)
	if o.links > 0 {
		if w.links, err = startLinks(ctx, o, echo, true, p.DialContext); err != nil {
			return w, err
		}
	} else {
		w.cleanup = append(w.cleanup, func() { _ = echo.Close() })
	}
	var restores []func() error
	for _, port := range []int{portOf(k.Addr()), echo.Port()} {
		r, err := p.Loss(port, 10)
		if err != nil {
			return w, err
		}
		restores = append(restores, r)
	}
	w.note = fmt.Sprintf("10 %% loss each way on the SIP and echo ports for %v; every flow death during it counts as false; ", o.lossFor)
	if err := sleep(ctx, o.lossFor); err != nil {
		return w, err
	}
	for _, r := range restores {
		if err := r(); err != nil {
			return w, err
		}
	}
	return w, w.finish(ctx)
}

// dnsDown: trunks register with "registrar.test" (SRV and A records served
// by dnsmasq in the server namespace) at Kamailio. At the cut dnsmasq stops
// and the SIP port is black-holed for o.hole, so the trunks must look the
// name up again to re-register; dnsmasq starts again 20 s after the cut.
func dnsDown(ctx context.Context, o *options) (*world, error) {
	if err := needKamailio(true); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		return nil, &skipError{"needs dnsmasq: " + err.Error()}
	}
	w := newWorld(o)
	p, k, err := kamInNetns(ctx, w, kamailio.Options{})
	if err != nil {
		return w, err
	}
	w.regs = append(w.regs, &regSlot{kam: k})
	w.env = "netns+kamailio+dnsmasq"
	ip := netns.ServerIP.String()
	dopts := dnstest.Options{Netns: p.Server().Name(), Addr: ip, Domain: "test",
		SRV:   []dnstest.SRV{{Name: "_sip._tcp.registrar.test", Target: "a.registrar.test", Port: portOf(k.Addr()), Priority: 10, Weight: 10}},
		Hosts: []dnstest.Host{{Name: "a.registrar.test", IP: ip}, {Name: "registrar.test", IP: ip}},
	}
	dns, err := dnstest.Launch(dopts)
	if err != nil {
		return w, err
	}
	w.cleanup = append(w.cleanup, func() { _ = dns.Stop() })
	// dns.Resolver asks the server at its address; a restarted dnsmasq
	// listens on the same one.
	resolver := dns.Resolver(func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = p.Client().Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	})
	err = w.startTrunksIn(ctx, p.Client(), sip.UAConfig{}, func(int) string { return "sip:registrar.test;transport=tcp" },
		func(c *sip.TrunkConfig) { c.Resolver = resolver })
	if err != nil {
		return w, err
	}
	w.bound, w.detect = o.bound(), true
	w.note = "dnsmasq stopped 20 s, the SIP port black-holed for the first " + o.hole().String() + " of them; recover_s from dnsmasq's return; "
	var restore func() error
	w.markCut()
	if err := dns.Stop(); err != nil {
		return w, err
	}
	if restore, err = p.BlackHole(portOf(k.Addr())); err != nil {
		return w, err
	}
	if err := sleep(ctx, o.hole()); err != nil {
		_ = restore()
		return w, err
	}
	if err := restore(); err != nil {
		return w, err
	}
	holeEnd := time.Now()
	if err := sleep(ctx, 20*time.Second-o.hole()); err != nil {
		return w, err
	}
	w.mu.Lock()
	back, n := holeEnd, 0
	for _, at := range w.trunkBack {
		if at.After(holeEnd) {
			back, n = maxTime(back, at), n+1
		}
	}
	w.mu.Unlock()
	w.note += fmt.Sprintf("%d trunks re-registered while the name was unresolvable, the last %.2f s after the black hole ended; ", n, back.Sub(holeEnd).Seconds())
	dns2, err := dnstest.Launch(dopts)
	if err != nil {
		return w, err
	}
	w.cleanup = append(w.cleanup, func() { _ = dns2.Stop() })
	return w, w.finish(ctx)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// blackHoleNetns is blackHole on a real path: Kamailio (TCP) and the echo
// server in the server namespace, trunks and Links in the client one, and
// nft dropping both ports' packets both ways for o.hole. Nothing answers
// for the peer, so the kernels see what they see in production.
func blackHoleNetns(ctx context.Context, o *options, busy bool) (*world, error) {
	w := newWorld(o)
	p, k, err := kamInNetns(ctx, w, kamailio.Options{})
	if err != nil {
		return w, err
	}
	w.regs = append(w.regs, &regSlot{kam: k})
	w.env = "netns+kamailio"
	if err := w.startTrunksIn(ctx, p.Client(), sip.UAConfig{}, func(int) string { return k.URI() }, nil); err != nil {
		return w, err
	}
	ln, err := p.ListenTCP(0)
	if err != nil {
		return w, err
	}
	echo := testkit.ServeEcho(ln)
	ports := []int{portOf(k.Addr())}
	if o.links > 0 {
		if w.links, err = startLinks(ctx, o, echo, busy, p.DialContext); err != nil {
			return w, err
		}
		ports = append(ports, echo.Port())
	} else {
		w.cleanup = append(w.cleanup, func() { _ = echo.Close() })
	}
	w.bound, w.detect = o.bound(), true
	var restores []func() error
	var holeErr error
	err = w.fault(ctx, o.hole(), func() {
		for _, port := range ports {
			r, err := p.BlackHole(port)
			holeErr = errors.Join(holeErr, err)
			if err == nil {
				restores = append(restores, r)
			}
		}
	}, func() {
		for _, r := range restores {
			holeErr = errors.Join(holeErr, r())
		}
	})
	return w, errors.Join(err, holeErr)
}
