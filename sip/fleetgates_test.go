package sip

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
	"github.com/relinkgo/relink/internal/redistest"
	"github.com/relinkgo/relink/internal/registrar"
)

// TestFleetClosesItsGates: the gates a Fleet makes are closed when Run
// returns, and a gate no trunk uses any more when its last trunk is
// removed: a fleetgate member (real Redis) leaves its fleet at once instead
// of heartbeating until its TTL; a gate the user passed in is not closed;
// and a second Run makes new gates that admit. (Before: the members stayed
// counted and their heartbeat goroutines ran on after Run returned.)
func TestFleetClosesItsGates(t *testing.T) {
	s := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	fg, err := fleetgate.New(rdb, fleetgate.Config{Prefix: "t:", ID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	r1 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	r2 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	members := func(r *registrar.Registrar) int64 {
		n, err := rdb.ZCard(context.Background(), "t:{tcp/"+r.Addr()+"}:members").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	f := NewFleet(newTestUA(t), FleetConfig{Gate: backoff.GateConfig{Fleet: fg}})
	var on2 *Trunk
	for i := range 4 {
		uri := r1.URI()
		if i == 3 {
			uri = r2.URI()
		}
		tr, err := f.Add(fleetTrunk(i, uri))
		if err != nil {
			t.Fatal(err)
		}
		on2 = tr
	}
	stop := running(t, f)
	waitFleet(t, f, Registered, 4, 10*time.Second)
	eventually(t, 3*time.Second, "both gates counted in Redis", func() bool { return members(r1) == 1 && members(r2) == 1 })
	g2 := f.Gate(r2.URI())

	if err := f.Remove(on2); err != nil {
		t.Fatal(err)
	}
	if n := members(r2); n != 0 {
		t.Errorf("the gate of a registrar no trunk uses any more still counted (%d) after Remove", n)
	}
	if _, err := g2.Acquire(context.Background()); !errors.Is(err, backoff.ErrClosed) {
		t.Errorf("Acquire on the removed trunk's gate: %v, want ErrClosed", err)
	}
	if n := members(r1); n != 1 {
		t.Errorf("the gate still in use: %d members, want 1", n)
	}

	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if n := members(r1); n != 0 {
		t.Errorf("%d fleet members left in Redis after Run returned, want 0", n)
	}
	if g := f.Gate(r1.URI()); g == nil || g.Stats().Succeeded == 0 {
		t.Errorf("after Run the closed gate's stats are gone: %v", g)
	}

	// A second Run takes new gates.
	stop = running(t, f)
	waitFleet(t, f, Registered, 3, 10*time.Second)
	eventually(t, 3*time.Second, "the new gate counted", func() bool { return members(r1) == 1 })
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatalf("second Run: %v", err)
	}
	if n := members(r1); n != 0 {
		t.Errorf("%d members after the second Run", n)
	}
}

// TestTrunkClosesOnlyItsOwnGate: a trunk given its own Gate (outside a Fleet)
// does not close it when Run returns; a trunk's own gate is closed, and a
// second Run registers again with a new one.
func TestTrunkClosesOnlyItsOwnGate(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	user := backoff.NewGate(backoff.GateConfig{})
	t.Cleanup(func() { user.Close() })
	withUser, _ := trunkOn(t, TrunkConfig{Gate: user, AOR: "sip:bob@relink.test"}, reg.URI())
	own, _ := trunkOn(t, TrunkConfig{}, reg.URI())
	for range 2 {
		stopUser, stopOwn := running(t, withUser), running(t, own)
		waitState(t, withUser, Registered, 5*time.Second)
		waitState(t, own, Registered, 5*time.Second)
		g := own.tgts[0].gate
		stopUser()
		stopOwn()
		if _, err := g.Acquire(context.Background()); !errors.Is(err, backoff.ErrClosed) {
			t.Errorf("the trunk's own gate after Run: %v, want ErrClosed", err)
		}
	}
	p, err := user.Acquire(context.Background())
	if err != nil {
		t.Fatalf("the user's gate after Run: %v", err)
	}
	p.Done(backoff.Success)
}
