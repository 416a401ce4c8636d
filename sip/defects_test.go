package sip

import (
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
