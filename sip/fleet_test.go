package sip

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/registrar"
)

func fleetTrunk(i int, uri string) TrunkConfig {
	return TrunkConfig{Registrars: []string{uri}, AOR: fmt.Sprintf("sip:u%d@relink.test", i),
		Password: testPassword}
}

func waitFleet(t *testing.T, f *Fleet, s TrunkState, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for f.Stats().Count(s) != n {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %d trunks %v (%+v)", d, n, s, f.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFleet: trunks added before and during Run register; Stats counts them
// by state; Remove unregisters one; Run's end unregisters all. Trunks of one
// registrar share one gate and one connection.
func TestFleet(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ua := newTestUA(t)
	f := NewFleet(ua, FleetConfig{})
	const n = 30
	for i := range n {
		if _, err := f.Add(fleetTrunk(i, reg.URI())); err != nil {
			t.Fatal(err)
		}
	}
	if st := f.Stats(); st.Trunks != n || st.Unregistered != n {
		t.Fatalf("stats before Run %+v", st)
	}
	if _, err := f.Add(TrunkConfig{Registrars: []string{reg.URI()}, AOR: "sip:x@y", Gate: sharedTestGate}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Add with a Gate: %v", err)
	}
	stop := running(t, f)
	waitFleet(t, f, Registered, n, 10*time.Second)
	late, err := f.Add(fleetTrunk(n, reg.URI()))
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, late, Registered, 5*time.Second)
	if st := f.Stats(); st.Registered != n+1 || st.Trunks != n+1 {
		t.Errorf("stats %+v", st)
	}
	if err := f.Remove(late); err != nil {
		t.Fatal(err)
	}
	if n := len(reg.Bindings(late.AOR())); n != 0 {
		t.Errorf("%d bindings of a removed trunk", n)
	}
	if err := f.Remove(late); !errors.Is(err, ErrNotInFleet) {
		t.Errorf("second Remove: %v", err)
	}
	if st := f.Stats(); st.Trunks != n {
		t.Errorf("stats after Remove %+v", st)
	}
	g := f.Gate(reg.URI())
	if g == nil || len(f.gates) != 1 {
		t.Fatalf("gates %v", f.gates)
	}
	if st := g.Stats(); st.Succeeded < n+1 {
		t.Errorf("shared gate admitted %d successes, want ≥ %d", st.Succeeded, n+1)
	}
	if st := reg.Stats(); st.Accepted != 1 {
		t.Errorf("%d connections, want 1 shared", st.Accepted)
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v", err)
	}
	if st := reg.Stats(); st.Bindings != 0 {
		t.Errorf("%d bindings after Run, want 0", st.Bindings)
	}
	if st := f.Stats(); st.Unregistered != n {
		t.Errorf("stats after Run %+v", st)
	}
}

// TestFleetRetryAfter: a 503 with Retry-After to any trunk pauses every
// trunk of the registrar: no REGISTER reaches it for that long.
func TestFleetRetryAfter(t *testing.T) {
	t.Parallel()
	var ev events
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, OnRequest: ev.add})
	reg.SetOverload(2 * time.Second)
	f := NewFleet(newTestUA(t), FleetConfig{})
	const n = 20
	for i := range n {
		if _, err := f.Add(fleetTrunk(i, reg.URI())); err != nil {
			t.Fatal(err)
		}
	}
	running(t, f)
	eventually(t, 3*time.Second, "a 503", func() bool { return reg.Stats().ByStatus[503] > 0 })
	time.Sleep(time.Second)
	reg.ClearOverload()
	waitFleet(t, f, Registered, n, 15*time.Second)
	regs := ev.registers()
	first := regs[0].Time
	var during, in503 int
	for _, e := range regs {
		if e.Status == 503 {
			in503++
		}
		if d := e.Time.Sub(first); d > 200*time.Millisecond && d < 2*time.Second {
			during++
		}
	}
	t.Logf("%d REGISTERs, %d answered 503, %d within the pause", len(regs), in503, during)
	if during != 0 {
		t.Errorf("%d REGISTERs during the 2 s Retry-After", during)
	}
	if in503 > n {
		t.Errorf("%d 503s for %d trunks", in503, n)
	}
	if st := f.Gate(reg.URI()).Stats(); st.Overloaded == 0 {
		t.Error("the gate saw no overload")
	}
}

// TestFleetFlowDeath: one flow's death recovers every trunk on it, through
// the shared gate, on one new connection.
func TestFleetFlowDeath(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	f := NewFleet(newTestUA(t), FleetConfig{Gate: backoff.GateConfig{ScoutMax: 300 * time.Millisecond}})
	const n = 50
	for i := range n {
		c := fleetTrunk(i, reg.URI())
		c.KeepAlive, c.KeepAliveTimeout = 200*time.Millisecond, 300*time.Millisecond
		c.RequestTimeout = time.Second
		if _, err := f.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	running(t, f)
	waitFleet(t, f, Registered, n, 10*time.Second)
	g := f.Gate(reg.URI())
	before := g.Stats().Admitted
	reg.SetSilent(true)
	waitFleet(t, f, Registered, 0, 3*time.Second)
	time.Sleep(time.Second)
	if s := g.State(); s != backoff.GateClosed {
		t.Errorf("gate %v while the registrar is silent, want closed", s)
	}
	admitted := g.Stats().Admitted - before
	restored := time.Now()
	reg.SetSilent(false)
	waitFleet(t, f, Registered, n, 10*time.Second)
	t.Logf("%d trunks re-registered %v after the registrar answered again; gate admitted %d attempts while it was silent",
		n, time.Since(restored), admitted)
	if st := reg.Stats(); st.Bindings != n {
		t.Errorf("%d bindings, want %d", st.Bindings, n)
	}
	// While closed the gate lets one scout through at a time: far fewer
	// attempts than trunks × time / RequestTimeout would be.
	if admitted > 2*n {
		t.Errorf("gate admitted %d attempts in ~1.5 s of silence for %d trunks", admitted, n)
	}
}

// TestFleetShutdownUnregistersThroughTheGate: a fleet that stops unregisters
// every trunk at once; against a registrar that limits its rate, the
// unregistrations go through the registrar's gate and retry after a 503, so
// that no binding is left behind. (Sent all at once, most drew a 503 and
// their bindings stayed until they expired.)
func TestFleetShutdownUnregistersThroughTheGate(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1,
		Capacity: 50, Window: 100 * time.Millisecond})
	f := NewFleet(newTestUA(t), FleetConfig{})
	const n = 40
	for i := range n {
		tc := fleetTrunk(i, reg.URI())
		tc.UnregisterTimeout = 10 * time.Second
		if _, err := f.Add(tc); err != nil {
			t.Fatal(err)
		}
	}
	stop := running(t, f)
	waitFleet(t, f, Registered, n, 20*time.Second)
	before := reg.Stats().ByStatus[503]
	start := time.Now()
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v", err)
	}
	st := reg.Stats()
	t.Logf("unregistered %d trunks in %v; 503s during the shutdown: %d", n, time.Since(start), st.ByStatus[503]-before)
	if st.Bindings != 0 {
		t.Errorf("%d bindings left after Run, want 0", st.Bindings)
	}
}
