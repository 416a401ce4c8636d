package testkit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
)

func newRegistrar(t *testing.T) *registrar.Registrar {
	t.Helper()
	r, err := registrar.New(registrar.Config{Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRegistererKeepsTheNonce(t *testing.T) {
	reg := newRegistrar(t)
	r, err := testkit.NewRegisterer(testkit.RegisterConfig{
		Client: testkit.NewSipgoClient(t), Registrar: reg.URI(), User: "alice", Password: "secret", CallID: "call-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for i, want := range []uint64{2, 3, 4} { // a 401 first, then one transaction each
		res, err := r.Register(ctx, 120)
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("Register %d: %v, %v", i, res, err)
		}
		if g := testkit.Granted(res, 0); g != 120*time.Second {
			t.Errorf("Granted = %v, want 120s", g)
		}
		if n := r.Transactions(); n != want {
			t.Errorf("after Register %d: %d transactions, want %d", i, n, want)
		}
	}
	a := reg.AoR("alice@relink.test")
	if fmt.Sprint(a.CallIDs) != "[call-1]" || fmt.Sprint(a.CSeqs) != "[1 2 3 4]" || fmt.Sprint(a.NCs) != "[1 2 3]" || a.OutOfOrder != 0 {
		t.Errorf("AoR stats %+v", a)
	}
	if r.CallID() != "call-1" || r.CSeq() != 5 {
		t.Errorf("CallID %q CSeq %d", r.CallID(), r.CSeq())
	}
	b := reg.Bindings("sip:alice@relink.test")
	if len(b) != 1 || b[0].Contact != "sip:alice@127.0.0.1:5999;transport=tcp" {
		t.Errorf("bindings %+v", b)
	}
	res, err := r.Register(ctx, 0) // unregister
	if err != nil || res.StatusCode != 200 || reg.Stats().Bindings != 0 {
		t.Fatalf("unregister: %v, %v; %d bindings", res, err, reg.Stats().Bindings)
	}
}

func TestRegistererFreshChallenge(t *testing.T) {
	reg := newRegistrar(t)
	r, err := testkit.NewRegisterer(testkit.RegisterConfig{
		Client: testkit.NewSipgoClient(t), Registrar: reg.URI(), User: "bob", Password: "secret",
		Domain: "example.test", Contact: "sip:bob@127.0.0.1:5060", FreshChallenge: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for range 2 {
		if res, err := r.Register(ctx, 60); err != nil || res.StatusCode != 200 {
			t.Fatalf("Register: %v, %v", res, err)
		}
	}
	if n := r.Transactions(); n != 4 {
		t.Errorf("%d transactions, want 4 (a challenge each time)", n)
	}
	a := reg.AoR("bob@example.test")
	if fmt.Sprint(a.CSeqs) != "[1 2 3 4]" || fmt.Sprint(a.NCs) != "[1 1]" {
		t.Errorf("AoR stats %+v", a)
	}
}

func TestRegistererBadPassword(t *testing.T) {
	reg := newRegistrar(t)
	r, err := testkit.NewRegisterer(testkit.RegisterConfig{
		Client: testkit.NewSipgoClient(t), Registrar: reg.URI(), User: "eve", Password: "wrong",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := r.Register(ctx, 60)
	if err != nil || res.StatusCode < 400 {
		t.Fatalf("Register with a wrong password: %v, %v", res, err)
	}
}

func TestNewRegistererValidates(t *testing.T) {
	for _, cfg := range []testkit.RegisterConfig{
		{},
		{Client: testkit.NewSipgoClient(t), Registrar: "sip:127.0.0.1:1"},
		{Client: testkit.NewSipgoClient(t), User: "a"},
	} {
		if _, err := testkit.NewRegisterer(cfg); err == nil {
			t.Errorf("NewRegisterer(%+v) succeeded", cfg)
		}
	}
}
