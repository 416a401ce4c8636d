package sip

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// TestRefreshBoundedByBinding: a gate paused for an hour (another trunk's
// absurd Retry-After) holds a refresh back; the trunk must not report
// Registered with that registrar past the end of its 3 s binding, and
// moves on to the backup registrar.
func TestRefreshBoundedByBinding(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response { return ok(req) }}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{Expires: 3 * time.Second, UnregisterTimeout: -1,
			Registrars: []string{"sip:registrar.test;transport=tcp", "sip:backup.test;transport=tcp"}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		defer func() { cancel(); <-done }()
		time.Sleep(time.Second)
		if s := tr.State(); s != Registered {
			t.Fatalf("state %v at 1 s", s)
		}
		tr.tgts[0].gate.PushBack(999999999 * time.Second) // clamped by the gate
		for at := time.Second; at < 8*time.Second; at += 100 * time.Millisecond {
			time.Sleep(100 * time.Millisecond)
			if at > 3100*time.Millisecond && tr.State() == Registered &&
				strings.Contains(tr.Registrar(), "registrar.test") {
				t.Fatalf("Registered with registrar.test at %v; its 3 s binding (granted at 0.01 s, refreshed by 2.6 s) has ended", at)
			}
		}
		if s := tr.State(); s != Registered || !strings.Contains(tr.Registrar(), "backup.test") {
			t.Errorf("at 8 s: %v with %s, want registered with the backup", s, tr.Registrar())
		}
	})
}
