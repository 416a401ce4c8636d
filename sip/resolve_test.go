package sip

import (
	"context"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/dnstest"
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
