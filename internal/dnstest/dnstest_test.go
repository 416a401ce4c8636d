package dnstest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestServeSRV: the records given are served, in priority order, and a name
// without records under Domain is not found.
func TestServeSRV(t *testing.T) {
	s := Start(t, Options{Domain: "test",
		SRV: []SRV{
			{Name: "_sip._tcp.registrar.test", Target: "b.registrar.test", Port: 5072, Priority: 20, Weight: 10},
			{Name: "_sip._tcp.registrar.test", Target: "a.registrar.test", Port: 5071, Priority: 10, Weight: 10},
		},
		Hosts: []Host{{Name: "a.registrar.test", IP: "192.0.2.1"}, {Name: "b.registrar.test", IP: "192.0.2.2"}},
	})
	r := s.Resolver(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, srvs, err := r.LookupSRV(ctx, "sip", "tcp", "registrar.test")
	if err != nil {
		t.Fatalf("%v\n%s", err, s.Log())
	}
	if len(srvs) != 2 || srvs[0].Target != "a.registrar.test." || srvs[0].Port != 5071 || srvs[1].Port != 5072 {
		t.Errorf("SRV %+v", srvs)
	}
	ips, err := r.LookupHost(ctx, "b.registrar.test")
	if err != nil || len(ips) != 1 || ips[0] != "192.0.2.2" {
		t.Errorf("b: %v %v", ips, err)
	}
	if _, err := r.LookupHost(ctx, "nothing.test"); err == nil {
		t.Error("a name without records resolved")
	}
	if err := s.Stop(); err != nil {
		t.Error(err)
	}
}
