package sip

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
)

// TestStopMidScoutKeepsGateClosed: a REGISTER cancelled because the trunk
// stops says nothing about the registrar, so a closed gate stays closed.
func TestStopMidScoutKeepsGateClosed(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: time.Second,
			answer: func(int, *sipmsg.Request) *sipmsg.Response { return nil }} // never answers
		gate := backoff.NewGate(backoff.GateConfig{})
		defer gate.Close()
		gate.Observe(backoff.Unreachable)
		if s := gate.State(); s != backoff.GateClosed {
			t.Fatalf("gate %v after Unreachable, want closed", s)
		}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{
			Registrars: []string{"sip:registrar.test;transport=tcp"}, Gate: gate,
			RequestTimeout: time.Hour, UnregisterTimeout: -1})
		runFor(tr, 10*time.Second) // the scout is in flight when Run stops
		if n := len(reg.sent()); n == 0 {
			t.Fatal("no scout was sent")
		}
		if s := gate.State(); s != backoff.GateClosed {
			t.Errorf("gate %v after a trunk stopped mid-scout, want closed", s)
		}
	})
}

// TestOKWithoutOurContact: a 200 that does not list our Contact made no
// binding: the trunk is not Registered, and tries again through the gate.
func TestOKWithoutOurContact(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response { return okNoContact(req) }}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{Expires: 600 * time.Second, UnregisterTimeout: -1})
		var saw []TrunkState
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		for range 20 {
			time.Sleep(time.Second)
			saw = append(saw, tr.State())
		}
		cancel()
		<-done
		for i, s := range saw {
			if s == Registered {
				t.Fatalf("Registered at %d s on a 200 without our Contact", i+1)
			}
		}
		if n := len(reg.sent()); n < 2 {
			t.Errorf("%d REGISTERs in 20 s, want retries", n)
		}
	})
}
