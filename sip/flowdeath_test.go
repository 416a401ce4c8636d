package sip

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/registrar"
)

// deathEvents receives OnFlowDeath events (at most 64 are kept).
type deathEvents chan FlowDeath

func (d deathEvents) add(fd FlowDeath) {
	select {
	case d <- fd:
	default:
	}
}

// first waits for the first event, failing after within.
func (d deathEvents) first(t *testing.T, within time.Duration) FlowDeath {
	t.Helper()
	select {
	case fd := <-d:
		return fd
	case <-time.After(within):
		t.Fatalf("no flow death reported within %v", within)
		return FlowDeath{}
	}
}

func deathUA(t *testing.T, ev deathEvents, watchCalls bool) *UA {
	t.Helper()
	return plainUA(t, UAConfig{OnFlowDeath: ev.add, WatchCalls: watchCalls})
}

// TestOnFlowDeath: when a TCP flow two trunks registered over goes silent,
// OnFlowDeath is called once, with the flow's network and addresses, an
// error matching ErrFlowDead and both trunks.
func TestOnFlowDeath(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ev := make(deathEvents, 64)
	ua := deathUA(t, ev, false)
	var trunks []*Trunk
	for i := range 2 {
		tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{reg.URI()}, AOR: fmt.Sprintf("sip:d%d@relink.test", i),
			Password: testPassword, KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		running(t, tr)
		trunks = append(trunks, tr)
	}
	for _, tr := range trunks {
		waitState(t, tr, Registered, 5*time.Second)
	}
	reg.SetSilent(true)
	got := ev.first(t, 3*time.Second)
	if got.Network != "tcp" || got.Remote != reg.Addr() || got.Local == "" || !errors.Is(got.Err, ErrFlowDead) ||
		len(got.Trunks) != 2 || got.At.IsZero() {
		t.Errorf("FlowDeath %+v, want tcp to %s with both trunks and ErrFlowDead", got, reg.Addr())
	}
	reg.SetSilent(false)
	for _, tr := range trunks {
		waitState(t, tr, Registered, 5*time.Second)
	}
	time.Sleep(100 * time.Millisecond) // the last event's goroutine
	if n, d := len(ev)+1, ua.mon.deaths.Load(); uint64(n) != d {
		t.Errorf("%d events for %d flow deaths: want one per flow relink declared dead", n, d)
	}
}

// TestOnFlowDeathUDP: a UDP registration whose OPTIONS qualify goes
// unanswered is reported like a TCP flow: Network "udp", the registrar's
// address, the trunk.
func TestOnFlowDeathUDP(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ev := make(deathEvents, 64)
	ua := deathUA(t, ev, false)
	tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{reg.UDPURI()}, AOR: "sip:u@relink.test",
		Password: testPassword, Qualify: 200 * time.Millisecond, RequestTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	reg.SetSilent(true)
	got := ev.first(t, 3*time.Second)
	if got.Network != "udp" || !strings.Contains(reg.UDPURI(), got.Remote) ||
		!errors.Is(got.Err, ErrFlowDead) || len(got.Trunks) != 1 || got.Trunks[0] != tr {
		t.Errorf("FlowDeath %+v, want udp to the registrar with the trunk", got)
	}
}

// TestWatchCalls: with UAConfig.WatchCalls, a connection the application
// opened for its own request (no trunk on it) is probed; when its peer
// goes silent it is evicted from sipgo's pool and reported with no Trunks.
// Without WatchCalls it is not watched.
func TestWatchCalls(t *testing.T) {
	for _, watch := range []bool{false, true} {
		reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
		ev := make(deathEvents, 64)
		ua := deathUA(t, ev, watch)
		ua.mon.callPref = flowPref{interval: 300 * time.Millisecond, timeout: 300 * time.Millisecond}
		cli, err := sipgo.NewClient(ua.UserAgent())
		if err != nil {
			t.Fatal(err)
		}
		req := sipmsg.NewRequest(sipmsg.OPTIONS, sipmsg.Uri{Scheme: "sip", Host: "relink.test"})
		req.SetDestination(reg.Addr())
		req.SetTransport("TCP")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		res, err := cli.Do(ctx, req)
		cancel()
		if err != nil {
			t.Fatalf("OPTIONS: %v", err)
		}
		_ = res
		if got, want := ua.mon.flows(), map[bool]int{false: 0, true: 1}[watch]; got != want {
			t.Fatalf("WatchCalls %v: %d flows watched after a call's request, want %d", watch, got, want)
		}
		if !watch {
			continue
		}
		pool := ua.UserAgent().TransportLayer().Pool("tcp")
		reg.SetSilent(true)
		got := ev.first(t, 3*time.Second)
		if got.Network != "tcp" || got.Remote != reg.Addr() || len(got.Trunks) != 0 || !errors.Is(got.Err, ErrFlowDead) {
			t.Errorf("FlowDeath %+v, want the call's tcp connection, no trunks", got)
		}
		if c := pool.Get(reg.Addr()); c != nil {
			c.TryClose()
			t.Error("the dead call connection is still in sipgo's pool")
		}
	}
}
