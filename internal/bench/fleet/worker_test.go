package main

import (
	"testing"
	"time"

	"github.com/relinkgo/relink/sip"
)

// The tracker counts a trunk back at its registration after its last loss:
// one lost and regained before the hole, then lost in it, is back only
// after the restore; one never lost is undetected; one lost and never back
// is waited for.
func TestTracker(t *testing.T) {
	a, b, c, d := &sip.Trunk{}, &sip.Trunk{}, &sip.Trunk{}, &sip.Trunk{}
	tr := &tracker{idx: map[*sip.Trunk]int{a: 0, b: 1, c: 2, d: 3},
		left: make([]time.Time, 4), back: make([]time.Time, 4)}
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ch := func(tk *sip.Trunk, from, to sip.TrunkState, s float64) {
		tr.change(sip.TrunkStateChange{Trunk: tk, From: from, To: to, At: at(s)})
	}
	ch(a, sip.Registered, sip.Registering, 0.5) // before the cut: ignored
	tr.cut(at(1))
	ch(a, sip.Registered, sip.Registering, 1.1) // a blip before the hole
	ch(a, sip.Registering, sip.Registered, 1.2)
	ch(a, sip.Registered, sip.Registering, 3) // the hole
	ch(a, sip.Registering, sip.Backoff, 4)
	ch(a, sip.Backoff, sip.Registering, 6.5)
	ch(a, sip.Registering, sip.Registered, 7) // after the restore at 6
	ch(b, sip.Registered, sip.Registering, 3)
	ch(b, sip.Registering, sip.Registered, 6.2)
	ch(c, sip.Registered, sip.Registering, 3) // never back
	_ = d                                     // never lost
	rep, waiting := tr.tally()
	if waiting != 1 || rep.Undetected != 1 {
		t.Errorf("waiting %d, undetected %d; want 1 and 1", waiting, rep.Undetected)
	}
	if got := time.Unix(0, rep.DoneUnixNano); !got.Equal(at(7)) {
		t.Errorf("done at %v, want %v", got.Sub(t0), at(7).Sub(t0))
	}
	if got := time.Unix(0, rep.FirstUnixNano); !got.Equal(at(6.2)) {
		t.Errorf("first at %v, want %v", got.Sub(t0), at(6.2).Sub(t0))
	}
	if rep := tr.wait(time.Now(), 30*time.Millisecond); rep.Stuck != 1 {
		t.Errorf("%d stuck at the timeout, want 1", rep.Stuck)
	}
}
