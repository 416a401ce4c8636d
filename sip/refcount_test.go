package sip

import (
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// TestFlowDeathRefBalance: relink releases only the references to sipgo's
// connections it took. A registered trunk's connection holds sipgo's two
// (its reader's and the pool's idle one) and no more; when its flow dies,
// idle or with a REGISTER pending on it, sipgo's accounting ends at exactly
// 0 (the connection closed by its last release), never below: a count
// below 0 means a release relink did not own, and that an earlier release
// reached 0 and closed a connection someone still used (sipgo's "ref went
// negative" warning). Before the fix the dead flow was closed with sipgo's
// Close, which zeroes the count under its reader: -1 once the reader
// exited.
func TestFlowDeathRefBalance(t *testing.T) {
	const ka = pingedKA
	reg, ua, tr, _ := pingedTrunk(t, 30*time.Second)
	pool := ua.UserAgent().TransportLayer().Pool("tcp")
	held := func(c sipmsg.Connection) int { return c.Ref(0) - 1 } // without ours
	old := pool.Get(reg.Addr())
	if old == nil {
		t.Fatal("no pooled connection to the registrar")
	}
	if n := held(old); n != 2 {
		t.Errorf("registered: %d references held, want 2 (sipgo's reader and pool)", n)
	}
	time.Sleep(3 * ka) // pings answered, OPTIONS-free
	if n := held(old); n != 2 {
		t.Errorf("after the pings: %d references held, want 2", n)
	}
	old.TryClose()

	reg.SetSilent(true)
	waitState(t, tr, Registering, 10*time.Second)
	settled(t, old, "the idle flow's connection")

	// The re-REGISTER goes out on a new connection, meets silence and is
	// pending on it when its flow dies too.
	var next sipmsg.Connection
	eventually(t, 10*time.Second, "a new connection to the registrar", func() bool {
		c := pool.Get(reg.Addr())
		if c == nil {
			return false
		}
		c.TryClose()
		next = c
		return c != old
	})
	waitState(t, tr, Backoff, 10*time.Second)
	settled(t, next, "the connection with a REGISTER pending")
}

// settled waits until sipgo's count on the dead connection c reaches 0,
// failing at once if it goes below.
func settled(t *testing.T, c sipmsg.Connection, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := c.Ref(0)
		switch {
		case n < 0:
			t.Fatalf("%s: sipgo's reference count %d, want 0 (released more often than referenced)", what, n)
		case n == 0:
			return
		case time.Now().After(deadline):
			t.Fatalf("%s: %d references still held 10 s after its flow died, want 0", what, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
