package sip

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/testkit"
)

// An attempt whose SYN was lost waits on; a probe that connects to the
// destination cancels it after its grace, and end reports it.
func TestPathProbeCancelsLostAttempt(t *testing.T) {
	noLeak(t)
	addr := answering(t)
	actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	p := startPathProbe(actx, cancel, net.Dialer{}, addr)
	<-actx.Done() // the lost attempt: it waits until cancelled
	took := time.Since(start)
	if !p.end() {
		t.Fatalf("the path answers, yet end reports no probe got through (attempt ended after %v: %v)", took, actx.Err())
	}
	// The first probe goes one period in, and its grace is 20 ms plus
	// three loopback round trips; generous bounds for a loaded machine.
	if took < pathProbeEvery || took > 2*time.Second {
		t.Fatalf("attempt cancelled after %v, want about %v", took, pathProbeEvery)
	}
}

// noLeak checks, after the test's other cleanups (its listeners), that
// the test left no goroutine behind.
func noLeak(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// answering starts a loopback server (testkit's echo) until the test
// ends and returns its address: a path that answers.
func answering(t *testing.T) string {
	t.Helper()
	e, err := testkit.ListenEcho("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e.Addr()
}

// An attempt that ends by itself is not reported as cancelled by a probe,
// and nothing probes after end (to a path that answers, a probe left
// running would cancel the attempt); a destination that refuses every
// connect never cancels an attempt.
func TestPathProbeLeavesAttempts(t *testing.T) {
	noLeak(t)
	t.Run("attempt done first", func(t *testing.T) {
		actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		p := startPathProbe(actx, cancel, net.Dialer{}, answering(t))
		time.Sleep(10 * time.Millisecond) // the attempt connects before any probe
		if p.end() {
			t.Fatal("end reports a cancellation for an attempt that ended by itself")
		}
		time.Sleep(3 * pathProbeEvery) // a probe still running would connect and cancel
		if actx.Err() != nil {
			t.Fatalf("the attempt's context ended after end: %v", actx.Err())
		}
	})
	t.Run("destination refuses", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens: every probe is refused at once
		actx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		defer cancel()
		p := startPathProbe(actx, cancel, net.Dialer{}, addr)
		<-actx.Done()
		if p.end() || actx.Err() != context.DeadlineExceeded {
			t.Fatalf("a refusing destination cancelled the attempt (%v)", actx.Err())
		}
	})
}

// The memory of lost destinations forgets a destination once it connects or
// a minute after its last timeout, and holds at most maxLostPaths (a UA
// dialling many destinations into black holes does not grow it without
// bound).
func TestLostPathsBounded(t *testing.T) {
	var l lostPaths
	t0 := time.Now()
	l.lose("a:5060", t0)
	if !l.has("a:5060", t0.Add(time.Second)) || l.has("b:5060", t0) {
		t.Fatal("a lost destination not remembered, or another taken for it")
	}
	if l.has("a:5060", t0.Add(lostMemory)) {
		t.Fatal("remembered past lostMemory")
	}
	l.found("a:5060")
	if l.has("a:5060", t0) {
		t.Fatal("remembered after it connected")
	}
	for i := range 3 * maxLostPaths {
		l.lose(net.JoinHostPort("10.0.0.1", strconv.Itoa(i)), t0)
	}
	if n := len(l.at); n > maxLostPaths {
		t.Fatalf("%d destinations remembered, want at most %d", n, maxLostPaths)
	}
	if last := net.JoinHostPort("10.0.0.1", strconv.Itoa(3*maxLostPaths-1)); !l.has(last, t0) {
		t.Fatal("the latest lost destination was forgotten to make room")
	}
}
