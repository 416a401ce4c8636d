package sip

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/dnstest"
	"github.com/relinkgo/relink/internal/registrar"
)

// TestLookupTargets: a registrar given by name without a port resolves
// through SRV in priority order (each record's addresses its own target and
// gate key, the Request-URI unchanged), falls back to the name's addresses
// at the default port without SRV, keeps the host name as a TLS target's
// destination, and is not looked up with a port or a numeric host.
func TestLookupTargets(t *testing.T) {
	t.Parallel()
	s := dnstest.Start(t, dnstest.Options{Domain: "test",
		SRV: []dnstest.SRV{
			{Name: "_sip._tcp.registrar.test", Target: "b.registrar.test", Port: 5072, Priority: 20, Weight: 5},
			{Name: "_sip._tcp.registrar.test", Target: "a.registrar.test", Port: 5071, Priority: 10, Weight: 5},
			{Name: "_sips._tcp.registrar.test", Target: "a.registrar.test", Port: 5061, Priority: 10, Weight: 5},
		},
		Hosts: []dnstest.Host{{Name: "a.registrar.test", IP: "192.0.2.1"}, {Name: "a.registrar.test", IP: "192.0.2.11"},
			{Name: "b.registrar.test", IP: "192.0.2.2"}, {Name: "plain.test", IP: "192.0.2.3"}},
	})
	res := s.Resolver(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		uri  string
		keys []string // nil: no lookup
	}{
		{"sip:registrar.test;transport=tcp", []string{"tcp/192.0.2.1:5071", "tcp/192.0.2.11:5071", "tcp/192.0.2.2:5072"}},
		{"sips:registrar.test", []string{"tls/a.registrar.test:5061"}},
		{"sip:plain.test", []string{"udp/192.0.2.3:5060"}},
		{"sip:plain.test;transport=ws", []string{"ws/192.0.2.3:80"}},
		{"sip:registrar.test:5080;transport=tcp", nil},
		{"sip:192.0.2.9;transport=tcp", nil},
	} {
		tg, err := parseTarget(tc.uri)
		if err != nil {
			t.Fatal(err)
		}
		if !needsLookup(&tg) {
			if tc.keys != nil {
				t.Errorf("%s: not looked up", tc.uri)
			}
			continue
		}
		if tc.keys == nil {
			t.Errorf("%s: looked up", tc.uri)
			continue
		}
		got, err := lookupTargets(ctx, res, tg)
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		var keys []string
		for _, e := range got {
			keys = append(keys, e.key)
			if e.uri.Host != tg.uri.Host || e.transport != tg.transport || e.dest != e.key[len(e.transport)+1:] {
				t.Errorf("%s: target %+v", tc.uri, e)
			}
		}
		if len(keys) != len(tc.keys) {
			t.Errorf("%s: keys %v, want %v", tc.uri, keys, tc.keys)
			continue
		}
		// a's two addresses come in either order; the priorities must not.
		if keys[len(keys)-1] != tc.keys[len(tc.keys)-1] {
			t.Errorf("%s: keys %v, want %v", tc.uri, keys, tc.keys)
		}
	}
	if _, err := lookupTargets(ctx, res, mustTarget(t, "sip:nothing.test;transport=tcp")); err == nil {
		t.Error("a name without records resolved")
	}
}

func mustTarget(t *testing.T, uri string) target {
	t.Helper()
	tg, err := parseTarget(uri)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// TestFleetSRVTargets: a Fleet's trunks on a registrar given by name share
// one gate per address its SRV records give (keyed transport/IP:port, found
// by Fleet.Gate from a trunk's Destination); when the first target's
// connections close and it stops answering, every trunk moves to the
// second.
func TestFleetSRVTargets(t *testing.T) {
	t.Parallel()
	r1 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	r2 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	p1, p2 := portOf(t, r1.Addr()), portOf(t, r2.Addr())
	s := dnstest.Start(t, dnstest.Options{Domain: "test",
		SRV: []dnstest.SRV{
			{Name: "_sip._tcp.fleet.test", Target: "one.fleet.test", Port: p1, Priority: 1, Weight: 1},
			{Name: "_sip._tcp.fleet.test", Target: "two.fleet.test", Port: p2, Priority: 2, Weight: 1},
		},
		Hosts: []dnstest.Host{{Name: "one.fleet.test", IP: "127.0.0.1"}, {Name: "two.fleet.test", IP: "127.0.0.1"}},
	})
	const n = 10
	f := NewFleet(newTestUA(t), FleetConfig{})
	for i := range n {
		cfg := fleetTrunk(i, "sip:fleet.test;transport=tcp")
		cfg.Resolver = s.Resolver(nil)
		cfg.KeepAlive, cfg.KeepAliveTimeout = 300*time.Millisecond, 300*time.Millisecond
		cfg.RequestTimeout = time.Second
		if _, err := f.Add(cfg); err != nil {
			t.Fatal(err)
		}
	}
	running(t, f)
	waitFleet(t, f, Registered, n, 10*time.Second)
	k1, k2 := fmt.Sprintf("tcp/127.0.0.1:%d", p1), fmt.Sprintf("tcp/127.0.0.1:%d", p2)
	gs := f.GateStats()
	if _, ok := gs[k1]; !ok || len(gs) != 2 {
		t.Fatalf("gates %v, want one per SRV target (%s, %s)", gs, k1, k2)
	}
	for _, tr := range f.Trunks() {
		if tr.Registrar() != "sip:127.0.0.1:"+fmt.Sprint(p1)+";transport=tcp" || f.Gate(tr.Registrar()) == nil {
			t.Fatalf("registered with %s (gate %v), want the first target", tr.Registrar(), f.Gate(tr.Registrar()))
		}
	}
	r1.SetSilent(true)
	r1.CloseConnections()
	eventually(t, 10*time.Second, "every trunk on the second target", func() bool {
		for _, tr := range f.Trunks() {
			if tr.State() != Registered || tr.Registrar() != "sip:127.0.0.1:"+fmt.Sprint(p2)+";transport=tcp" {
				return false
			}
		}
		return true
	})
	if g := f.Gate("sip:127.0.0.1:" + fmt.Sprint(p2) + ";transport=tcp"); g == nil || g.Stats().Admitted == 0 {
		t.Errorf("the second target's gate admitted nothing: %v", g)
	}
}

func portOf(t *testing.T, hostport string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
