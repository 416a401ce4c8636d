package conn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/testkit"
)

// dialAnswer is how fakeNet answers one dial.
type dialAnswer int

const (
	accept    dialAnswer = iota
	refuse               // ECONNREFUSED at once
	hang                 // blocks until the dial's ctx ends
	notFound             // DNS: no such host
	permanent            // errDenied marked by backoff.Permanent
)

var errDenied = errors.New("denied by policy")

type dialRec struct {
	addr string
	at   time.Duration // since the fakeNet was made
}

// fakeNet is a Dialer.Dial for tests: answer decides each dial (n counts
// from 1); accepted dials get a net.Pipe whose server end discards what it
// reads until the Link closes the client end.
type fakeNet struct {
	answer func(n int, addr string) dialAnswer
	start  time.Time

	mu    sync.Mutex
	dials []dialRec
	peers []net.Conn      // server ends, in order of accepted dials
	ended []chan struct{} // closed when the server end's reads end
	wg    sync.WaitGroup
}

func newFakeNet(answer func(n int, addr string) dialAnswer) *fakeNet {
	return &fakeNet{answer: answer, start: time.Now()}
}

func (f *fakeNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dials = append(f.dials, dialRec{addr: addr, at: time.Since(f.start)})
	n := len(f.dials)
	f.mu.Unlock()
	switch f.answer(n, addr) {
	case refuse:
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	case hang:
		<-ctx.Done()
		return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
	case permanent:
		return nil, backoff.Permanent(&net.OpError{Op: "dial", Net: network, Err: errDenied})
	case notFound:
		host, _, _ := net.SplitHostPort(addr)
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
	}
	cli, srv := net.Pipe()
	ended := make(chan struct{})
	f.mu.Lock()
	f.peers = append(f.peers, srv)
	f.ended = append(f.ended, ended)
	f.mu.Unlock()
	f.wg.Go(func() {
		io.Copy(io.Discard, srv) // until the client end is closed
		srv.Close()
		close(ended)
	})
	return cli, nil
}

func (f *fakeNet) dialer() *Dialer { return &Dialer{Dial: f.dial} }

func (f *fakeNet) dialTimes() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ts []time.Duration
	for _, d := range f.dials {
		ts = append(ts, d.at)
	}
	return ts
}

func (f *fakeNet) dialAddrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var as []string
	for _, d := range f.dials {
		as = append(as, d.addr)
	}
	return as
}

// peerEnded returns a channel closed when the i-th accepted connection's
// server end stopped reading: the client end was closed.
func (f *fakeNet) peerEnded(i int) <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ended[i]
}

// peer returns the server end of the i-th accepted connection (from 0).
func (f *fakeNet) peer(i int) net.Conn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.peers[i]
}

// scriptedSessions returns a Session whose k-th run (from 0) lives
// lifetimes[k] and then returns errBye; runs beyond the script read until
// the connection ends, then return the read error. count reports the runs.
func scriptedSessions(lifetimes ...time.Duration) (session func(context.Context, *Conn) error, count func() int) {
	var mu sync.Mutex
	n := 0
	session = func(ctx context.Context, c *Conn) error {
		mu.Lock()
		k := n
		n++
		mu.Unlock()
		if k < len(lifetimes) {
			t := time.NewTimer(lifetimes[k])
			defer t.Stop()
			select {
			case <-t.C:
				return errBye
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		_, err := c.Read(make([]byte, 1))
		for err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		return err
	}
	count = func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	return session, count
}

var errBye = errors.New("session over")

// noJitter is a deterministic policy: 1 s, 2 s, 4 s, 8 s, 8 s…
func noJitter() backoff.Factory {
	return backoff.NewFactory(backoff.Exponential{Base: time.Second, Max: 8 * time.Second, Jitter: backoff.NoJitter})
}

// recorder collects StateChanges.
type recorder struct {
	mu  sync.Mutex
	evs []LinkStateChange
}

func (r *recorder) record(e LinkStateChange) {
	r.mu.Lock()
	r.evs = append(r.evs, e)
	r.mu.Unlock()
}

func (r *recorder) events() []LinkStateChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.evs)
}

func (r *recorder) states() []LinkState {
	var s []LinkState
	for _, e := range r.events() {
		s = append(s, e.To)
	}
	return s
}

// startRun runs l.Run in a goroutine; wait returns its error, and fails
// the test if Run has not returned within an hour of the wait (virtual time
// under synctest: a Link that never stops fails at once instead of hanging).
func startRun(ctx context.Context, t *testing.T, l *Link) (wait func() error) {
	ch := make(chan error, 1)
	go func() { ch <- l.Run(ctx) }()
	return func() error {
		t.Helper()
		select {
		case err := <-ch:
			return err
		case <-time.After(time.Hour):
			t.Fatal("Run did not return within an hour")
			return nil
		}
	}
}

func mustLink(t *testing.T, cfg LinkConfig) *Link {
	t.Helper()
	l, err := NewLink(cfg)
	if err != nil {
		t.Fatalf("NewLink: %v", err)
	}
	return l
}

func wantState(t *testing.T, l *Link, want LinkState) {
	t.Helper()
	if got := l.State(); got != want {
		t.Fatalf("State() = %v, want %v", got, want)
	}
}

func TestLinkRestartsSessionWhenConnDies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		session, count := scriptedSessions() // read until the connection ends
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), OnStateChange: rec.record})
		wantState(t, l, LinkIdle)
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)

		synctest.Wait()
		wantState(t, l, LinkReady)
		if n := count(); n != 1 {
			t.Fatalf("sessions = %d, want 1", n)
		}
		fn.peer(0).Close() // the server hangs up: the session's Read sees EOF
		synctest.Wait()
		wantState(t, l, LinkTransientFailure)
		evs := rec.events()
		if last := evs[len(evs)-1]; last.From != LinkReady || !errors.Is(last.Err, io.EOF) || last.Destination != "srv:5060" {
			t.Fatalf("last event = %+v, want ready→transient-failure with io.EOF at srv:5060", last)
		}
		// The session lived less than HealthyAfter: the first delay, 1 s.
		time.Sleep(time.Second - time.Nanosecond)
		synctest.Wait()
		wantState(t, l, LinkTransientFailure)
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		wantState(t, l, LinkReady)
		if n := count(); n != 2 {
			t.Fatalf("sessions = %d, want 2", n)
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
		wantState(t, l, LinkShutdown)
		if got, want := fn.dialTimes(), []time.Duration{0, time.Second}; !slices.Equal(got, want) {
			t.Fatalf("dial times = %v, want %v", got, want)
		}
		fn.wg.Wait()
	})
}

// A Session that returns an error marked by backoff.Permanent stops the
// Link, whether it ended the connection itself or saw it die first: Run
// returns that error, still marked, and no redial follows.
func TestLinkPermanentSessionErrorStops(t *testing.T) {
	errAuth := errors.New("login rejected")
	for _, tc := range []struct {
		name    string
		session func(ctx context.Context, c *Conn) error
		peerEOF bool // the peer hangs up first
	}{
		{"session ends the connection", func(context.Context, *Conn) error {
			time.Sleep(time.Second)
			return backoff.Permanent(errAuth)
		}, false},
		{"after the connection died", func(_ context.Context, c *Conn) error {
			_, err := c.Read(make([]byte, 1))
			return backoff.Permanent(fmt.Errorf("%w: %w", errAuth, err))
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fn := newFakeNet(func(int, string) dialAnswer { return accept })
				var rec recorder
				l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"},
					Session: tc.session, Backoff: noJitter(), HealthyAfter: -1, OnStateChange: rec.record})
				wait := startRun(t.Context(), t, l)
				synctest.Wait()
				wantState(t, l, LinkReady)
				if tc.peerEOF {
					fn.peer(0).Close()
				}
				err := wait()
				if !errors.Is(err, errAuth) || !backoff.IsPermanent(err) {
					t.Fatalf("Run = %v, want errAuth marked permanent", err)
				}
				wantState(t, l, LinkShutdown)
				want := []LinkState{LinkConnecting, LinkReady, LinkShutdown}
				if got := rec.states(); !slices.Equal(got, want) {
					t.Fatalf("states = %v, want %v", got, want)
				}
				if last := rec.events()[2]; !errors.Is(last.Err, errAuth) || last.Destination != "srv:5060" {
					t.Fatalf("shutdown event = %+v, want errAuth at srv:5060", last)
				}
				time.Sleep(time.Minute) // no redial follows
				if n := len(fn.dialTimes()); n != 1 {
					t.Fatalf("dials = %d, want 1", n)
				}
				<-fn.peerEnded(0) // the Link closed the connection
				fn.wg.Wait()
			})
		})
	}
}

// A dial that returns an error marked by backoff.Permanent stops the Link
// at once, with a Gate told of a client failure (not of an unreachable
// server).
func TestLinkPermanentDialErrorStops(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(n int, _ string) dialAnswer {
			if n == 1 {
				return refuse
			}
			return permanent
		})
		session, count := scriptedSessions()
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"a:1", "b:2"}, Session: session,
			Backoff: noJitter(), OnStateChange: rec.record})
		start := time.Now()
		err := l.Run(t.Context())
		if !errors.Is(err, errDenied) || !backoff.IsPermanent(err) {
			t.Fatalf("Run = %v, want errDenied marked permanent", err)
		}
		if errors.Is(err, ErrLinkGaveUp) {
			t.Fatalf("Run = %v: a permanent error is not giving up after MaxAttempts", err)
		}
		want := []LinkState{LinkConnecting, LinkTransientFailure, LinkConnecting, LinkShutdown}
		if got := rec.states(); !slices.Equal(got, want) {
			t.Fatalf("states = %v, want %v", got, want)
		}
		if last := rec.events()[3]; last.Destination != "b:2" || !errors.Is(last.Err, errDenied) {
			t.Fatalf("shutdown event = %+v, want errDenied at b:2", last)
		}
		if at := rec.events()[2].At.Sub(start); at != time.Second {
			t.Fatalf("second connecting At = start+%v, want start+1s (the first backoff delay)", at)
		}
		if got, want := fn.dialTimes(), []time.Duration{0, time.Second}; !slices.Equal(got, want) {
			t.Fatalf("dial times = %v, want %v", got, want)
		}
		if count() != 0 {
			t.Fatalf("sessions = %d, want 0", count())
		}
	})
}

// A closed Gate stops the Link: retrying cannot help.
func TestLinkStopsWhenGateCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return refuse })
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv:5060"})
		session, _ := scriptedSessions()
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Gate: gate, Backoff: noJitter(), OnStateChange: rec.record})
		wait := startRun(t.Context(), t, l)
		time.Sleep(10 * time.Second) // refused dials, paced by the backoff and the gate
		synctest.Wait()
		dials := len(fn.dialTimes())
		if dials == 0 {
			t.Fatal("no dial in 10 s")
		}
		gate.Close()
		if err := wait(); !errors.Is(err, backoff.ErrClosed) {
			t.Fatalf("Run = %v, want backoff.ErrClosed", err)
		}
		if n := len(fn.dialTimes()); n != dials {
			t.Fatalf("dials after Close = %d, want none", n-dials)
		}
		evs := rec.events()
		if last := evs[len(evs)-1]; last.To != LinkShutdown || !errors.Is(last.Err, backoff.ErrClosed) {
			t.Fatalf("last event = %+v, want shutdown with backoff.ErrClosed", last)
		}
	})
}

// A session that never touches its Conn is still stopped when the Conn
// declares its peer gone: its ctx is cancelled with the Conn's Err.
func TestLinkConnDeathCancelsSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		causes := make(chan error, 4)
		session := func(ctx context.Context, c *Conn) error {
			<-ctx.Done()
			causes <- context.Cause(ctx)
			return ctx.Err()
		}
		var rec recorder
		d := fn.dialer()
		d.Config = Config{Probe: CRLF, ProbeInterval: time.Second, ProbeTimeout: time.Second}
		l := mustLink(t, LinkConfig{Dialer: d, Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), OnStateChange: rec.record})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)

		synctest.Wait()
		wantState(t, l, LinkReady)
		// The peer reads the probe but never answers: dead at 1 s + 1 s.
		time.Sleep(2 * time.Second)
		synctest.Wait()
		select {
		case err := <-causes:
			if !errors.Is(err, ErrUnresponsive) {
				t.Fatalf("session ctx cause = %v, want ErrUnresponsive", err)
			}
		default:
			t.Fatal("session still running 2 s after the peer went silent")
		}
		wantState(t, l, LinkTransientFailure)
		evs := rec.events()
		if last := evs[len(evs)-1]; !errors.Is(last.Err, ErrUnresponsive) {
			t.Fatalf("LinkStateChange.Err = %v, want ErrUnresponsive", last.Err)
		}
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		fn.wg.Wait()
	})
}

func TestLinkBackoffAppliedAndReset(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answers := map[int]dialAnswer{1: refuse, 2: refuse, 3: refuse, 4: accept, 5: refuse, 6: accept, 7: refuse, 8: accept}
		fn := newFakeNet(func(n int, _ string) dialAnswer { return answers[n] })
		// Session 0 is healthy (10 s ≥ HealthyAfter), session 1 is not.
		session, count := scriptedSessions(10*time.Second, 2*time.Second)
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), HealthyAfter: 10 * time.Second})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Minute)
		synctest.Wait()
		wantState(t, l, LinkReady)
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v", err)
		}
		s := time.Second
		want := []time.Duration{
			0,      // refused → 1 s
			1 * s,  // refused → 2 s
			3 * s,  // refused → 4 s
			7 * s,  // accepted; healthy session of 10 s
			17 * s, // at once after a healthy connection; refused → 1 s (reset)
			18 * s, // accepted; session of 2 s, not healthy → 2 s
			22 * s, // refused → 4 s
			26 * s, // accepted
		}
		if got := fn.dialTimes(); !slices.Equal(got, want) {
			t.Fatalf("dial times\n got %v\nwant %v", got, want)
		}
		if n := count(); n != 3 {
			t.Fatalf("sessions = %d, want 3", n)
		}
		fn.wg.Wait()
	})
}

// HealthyAfter negative turns the minimum lifetime off: every connection
// that was established counts as healthy, so each redial is immediate.
func TestLinkHealthyAfterNegative(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		session, count := scriptedSessions(time.Millisecond, time.Millisecond, time.Millisecond)
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), HealthyAfter: -1})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Second)
		cancel()
		wait()
		// Every connection counts as healthy: each redial is immediate.
		ms := time.Millisecond
		if got, want := fn.dialTimes(), []time.Duration{0, ms, 2 * ms, 3 * ms}; !slices.Equal(got, want) {
			t.Fatalf("dial times = %v, want %v", got, want)
		}
		if count() != 4 {
			t.Fatalf("sessions = %d, want 4", count())
		}
		fn.wg.Wait()
	})
}

func TestLinkRotatesAddrs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answers := map[int]dialAnswer{1: refuse, 2: refuse, 3: accept, 4: refuse, 5: refuse, 6: accept, 7: accept}
		fn := newFakeNet(func(n int, _ string) dialAnswer { return answers[n] })
		// Session 0 (on c) is healthy; session 1 (on b) ends at once.
		session, _ := scriptedSessions(time.Second, 0)
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"a:1", "b:1", "c:1"}, Session: session,
			Backoff: noJitter(), HealthyAfter: time.Second, OnStateChange: rec.record})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Minute)
		cancel()
		wait()
		want := []string{
			"a:1", "b:1", // refused: rotate
			"c:1", // accepted, healthy session, lost
			"c:1", // the first replacement goes to the same address; refused
			"a:1", // refused
			"b:1", // accepted; short session: rotate
			"c:1", // accepted
		}
		if got := fn.dialAddrs(); !slices.Equal(got, want) {
			t.Fatalf("dial order\n got %v\nwant %v", got, want)
		}
		var readyAt []string
		for _, e := range rec.events() {
			if e.To == LinkReady {
				readyAt = append(readyAt, e.Destination)
			}
		}
		if want := []string{"c:1", "b:1", "c:1"}; !slices.Equal(readyAt, want) {
			t.Fatalf("ready at %v, want %v", readyAt, want)
		}
		fn.wg.Wait()
	})
}

func TestLinkUsesGate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answers := map[int]dialAnswer{1: refuse, 2: hang, 3: notFound, 4: accept, 5: accept}
		fn := newFakeNet(func(n int, _ string) dialAnswer { return answers[n] })
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv", Rate: -1})
		session, _ := scriptedSessions(time.Second)
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), Gate: gate, HealthyAfter: time.Second, DialTimeout: 5 * time.Second})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Minute)
		synctest.Wait()
		wantState(t, l, LinkReady)
		s := gate.Stats()
		// 5 dials, the immediate redial after the healthy session included.
		if s.Admitted != 5 || s.Unreachable != 2 || s.ClientFailures != 1 || s.Succeeded != 2 || s.InFlight != 0 {
			t.Fatalf("gate stats = %+v, want admitted 5, unreachable 2 (refused, timeout), "+
				"client failures 1 (no such host), succeeded 2, in flight 0", s)
		}
		if got := fn.dialTimes(); len(got) != 5 || got[2]-got[1] < 5*time.Second {
			t.Fatalf("dial times = %v: want 5 dials, the hung one bounded by DialTimeout (5 s)", got)
		}
		cancel()
		wait()
		fn.wg.Wait()
	})
}

// The Link waits for the Gate's admission: while another holder keeps the
// only in-flight slot, it stays LinkConnecting, queued, without dialing.
func TestLinkWaitsForGate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		gate := backoff.NewGate(backoff.GateConfig{Destination: "srv", Rate: -1, MaxInFlight: 1})
		held, err := gate.Acquire(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		session, _ := scriptedSessions()
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session, Gate: gate})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Hour)
		synctest.Wait()
		wantState(t, l, LinkConnecting)
		if q, n := gate.Stats().Queued, len(fn.dialTimes()); q != 1 || n != 0 {
			t.Fatalf("queued %d, dials %d; want 1 and 0", q, n)
		}
		held.Done(backoff.Success)
		synctest.Wait()
		wantState(t, l, LinkReady)
		// Cancelled while queued: Run returns at once and leaves no waiter.
		held, err = gate.Acquire(t.Context()) // the Link's permit was done at connect
		if err != nil {
			t.Fatal(err)
		}
		fn.peer(0).Close()
		time.Sleep(time.Hour) // past any backoff delay
		synctest.Wait()
		wantState(t, l, LinkConnecting)
		if q := gate.Stats().Queued; q != 1 {
			t.Fatalf("queued %d, want 1", q)
		}
		start := time.Now()
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) || time.Since(start) != 0 {
			t.Fatalf("Run = %v after %v, want context.Canceled at once", err, time.Since(start))
		}
		held.Done(backoff.Success)
		if s := gate.Stats(); s.Queued != 0 || s.InFlight != 0 {
			t.Fatalf("gate stats after cancel = %+v", s)
		}
		fn.wg.Wait()
	})
}

func TestLinkCancelWaitsForSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		var returned sync.WaitGroup
		returned.Add(1)
		var sessionCause error
		var sessionReturnedAt time.Duration
		var closedBeforeReturn bool
		start := time.Now()
		session := func(ctx context.Context, c *Conn) error {
			defer returned.Done()
			<-ctx.Done()
			sessionCause = context.Cause(ctx)
			time.Sleep(3 * time.Second) // a goodbye exchange, say
			select {
			case <-fn.peerEnded(0):
				closedBeforeReturn = true
			default:
			}
			sessionReturnedAt = time.Since(start)
			return ctx.Err()
		}
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session, OnStateChange: rec.record})
		ctx, cancel := context.WithCancelCause(t.Context())
		wait := startRun(ctx, t, l)
		synctest.Wait()
		wantState(t, l, LinkReady)

		errStop := errors.New("operator said stop")
		cancel(errStop)
		err := wait()
		if !errors.Is(err, errStop) {
			t.Fatalf("Run = %v, want the cause %v", err, errStop)
		}
		if runAt := time.Since(start); sessionReturnedAt != 3*time.Second || runAt != 3*time.Second {
			t.Fatalf("session returned at %v, Run at %v; want both at 3s", sessionReturnedAt, runAt)
		}
		if !errors.Is(sessionCause, errStop) {
			t.Fatalf("session ctx cause = %v, want %v", sessionCause, errStop)
		}
		if !closedBeforeReturn {
			t.Fatal("the connection was still open while the session wound down")
		}
		evs := rec.events()
		if last := evs[len(evs)-1]; last.To != LinkShutdown || !errors.Is(last.Err, errStop) {
			t.Fatalf("last event = %+v, want shutdown with %v", last, errStop)
		}
		fn.wg.Wait()
	})
}

func TestLinkCancelWhileNotConnected(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer dialAnswer
		state  LinkState // where the Link waits when cancelled
	}{
		{"in backoff", refuse, LinkTransientFailure},
		{"in dial", hang, LinkConnecting},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				fn := newFakeNet(func(int, string) dialAnswer { return tc.answer })
				session, count := scriptedSessions()
				l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
					Backoff:     backoff.NewFactory(backoff.Exponential{Base: time.Hour, Jitter: backoff.NoJitter}),
					DialTimeout: -1})
				ctx, cancel := context.WithCancel(t.Context())
				wait := startRun(ctx, t, l)
				time.Sleep(time.Minute)
				synctest.Wait()
				wantState(t, l, tc.state)
				start := time.Now()
				cancel()
				if err := wait(); !errors.Is(err, context.Canceled) {
					t.Fatalf("Run = %v", err)
				}
				if d := time.Since(start); d != 0 {
					t.Fatalf("Run returned %v after cancel, want at once", d)
				}
				if count() != 0 || len(fn.dialTimes()) != 1 {
					t.Fatalf("sessions %d, dials %d; want 0 and 1", count(), len(fn.dialTimes()))
				}
			})
		})
	}
}

func TestLinkStateSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answers := map[int]dialAnswer{1: accept, 2: refuse, 3: accept}
		fn := newFakeNet(func(n int, _ string) dialAnswer { return answers[n] })
		session, _ := scriptedSessions()
		var rec recorder
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), OnStateChange: rec.record})

		// An observer that follows the Link with WaitForStateChange.
		var seen []LinkState
		observed := make(chan struct{})
		go func() {
			defer close(observed)
			for s := l.State(); ; {
				if !l.WaitForStateChange(t.Context(), s) {
					return
				}
				s = l.State()
				seen = append(seen, s)
				if s == LinkShutdown {
					return
				}
			}
		}()

		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		synctest.Wait()
		wantState(t, l, LinkReady)
		fn.peer(0).Close()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		wantState(t, l, LinkReady)
		cancel()
		wait()
		select {
		case <-observed:
		case <-time.After(time.Hour):
			t.Fatal("the observer did not see LinkShutdown within an hour")
		}

		type ev struct {
			from, to LinkState
			err      error
		}
		var got []ev
		for _, e := range rec.events() {
			got = append(got, ev{e.From, e.To, e.Err})
		}
		want := []struct {
			from, to LinkState
			err      error
		}{
			{LinkIdle, LinkConnecting, nil},
			{LinkConnecting, LinkReady, nil},
			{LinkReady, LinkTransientFailure, io.EOF},
			{LinkTransientFailure, LinkConnecting, nil},
			{LinkConnecting, LinkTransientFailure, syscall.ECONNREFUSED},
			{LinkTransientFailure, LinkConnecting, nil},
			{LinkConnecting, LinkReady, nil},
			{LinkReady, LinkShutdown, context.Canceled},
		}
		if len(got) != len(want) {
			t.Fatalf("events %v, want %d", got, len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.from != w.from || g.to != w.to || (w.err == nil) != (g.err == nil) || (w.err != nil && !errors.Is(g.err, w.err)) {
				t.Fatalf("event %d = %v→%v (%v), want %v→%v (%v)", i, g.from, g.to, g.err, w.from, w.to, w.err)
			}
		}
		// The observer saw the states that lasted, in order, ending at
		// shutdown; it may skip instantaneous ones but never reorders.
		if !isSubsequence(seen, rec.states()) || seen[len(seen)-1] != LinkShutdown ||
			!slices.Contains(seen, LinkReady) || !slices.Contains(seen, LinkTransientFailure) {
			t.Fatalf("observer saw %v; all changes %v", seen, rec.states())
		}
		fn.wg.Wait()
	})
}

func isSubsequence(sub, seq []LinkState) bool {
	i := 0
	for _, s := range seq {
		if i < len(sub) && sub[i] == s {
			i++
		}
	}
	return i == len(sub)
}

func TestLinkWaitForStateChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		session, _ := scriptedSessions()
		l := mustLink(t, LinkConfig{Addrs: []string{"srv:5060"}, Session: session})
		if !l.WaitForStateChange(t.Context(), LinkReady) {
			t.Fatal("WaitForStateChange(LinkReady) on an LinkIdle link = false, want true at once")
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		if l.WaitForStateChange(ctx, LinkIdle) {
			t.Fatal("WaitForStateChange(LinkIdle) on an LinkIdle link = true")
		}
		if d := time.Since(start); d != time.Second {
			t.Fatalf("returned after %v, want 1s (ctx)", d)
		}
		// Many waiters are all woken by one change.
		fn := newFakeNet(func(int, string) dialAnswer { return hang })
		l = mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session, DialTimeout: -1})
		var woken sync.WaitGroup
		for range 10 {
			woken.Go(func() {
				if !l.WaitForStateChange(t.Context(), LinkIdle) {
					t.Error("waiter not woken")
				}
			})
		}
		synctest.Wait()
		rctx, rcancel := context.WithCancel(t.Context())
		wait := startRun(rctx, t, l)
		woken.Wait()
		rcancel()
		wait()
	})
}

func TestLinkRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := newFakeNet(func(int, string) dialAnswer { return accept })
		session, count := scriptedSessions()
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		synctest.Wait()
		if err := l.Run(t.Context()); !errors.Is(err, ErrLinkRunning) {
			t.Fatalf("concurrent Run = %v, want ErrLinkRunning", err)
		}
		wantState(t, l, LinkReady) // the first Run is unaffected
		cancel()
		wait()
		wantState(t, l, LinkShutdown)
		// After it returned, Run starts over.
		ctx, cancel = context.WithCancel(t.Context())
		wait = startRun(ctx, t, l)
		synctest.Wait()
		wantState(t, l, LinkReady)
		cancel()
		if err := wait(); !errors.Is(err, context.Canceled) {
			t.Fatalf("second Run = %v", err)
		}
		if count() != 2 {
			t.Fatalf("sessions = %d, want 2", count())
		}
		fn.wg.Wait()
	})
}

func TestLinkGivesUpOnlyWhenTold(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cfg       LinkConfig
		wantDials int
	}{
		{"MaxAttempts", LinkConfig{MaxAttempts: 3, Backoff: noJitter()}, 3},
		{"policy Stop", LinkConfig{Backoff: backoff.NewFactory(backoff.Exponential{MaxAttempts: 2})}, 3},
		{"short sessions count", LinkConfig{MaxAttempts: 2, Backoff: noJitter()}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				answer := refuse
				if strings.HasPrefix(tc.name, "short") {
					answer = accept
				}
				fn := newFakeNet(func(int, string) dialAnswer { return answer })
				session, _ := scriptedSessions(0, 0, 0, 0)
				cfg := tc.cfg
				cfg.Dialer, cfg.Addrs, cfg.Session = fn.dialer(), []string{"srv:5060"}, session
				l := mustLink(t, cfg)
				err := l.Run(t.Context())
				if !errors.Is(err, ErrLinkGaveUp) {
					t.Fatalf("Run = %v, want ErrLinkGaveUp", err)
				}
				if answer == refuse && !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("Run = %v, want the last failure (ECONNREFUSED) wrapped", err)
				}
				if answer == accept && !errors.Is(err, errBye) {
					t.Fatalf("Run = %v, want the last failure (errBye) wrapped", err)
				}
				if n := len(fn.dialTimes()); n != tc.wantDials {
					t.Fatalf("dials = %d, want %d", n, tc.wantDials)
				}
				wantState(t, l, LinkShutdown)
				fn.wg.Wait()
			})
		})
	}
	// Without being told (MaxAttempts zero, the default, or negative, off),
	// it keeps trying: a day of refusals.
	for _, maxAttempts := range []int{0, -1} {
		synctest.Test(t, func(t *testing.T) {
			fn := newFakeNet(func(int, string) dialAnswer { return refuse })
			session, _ := scriptedSessions()
			l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
				MaxAttempts: maxAttempts})
			ctx, cancel := context.WithTimeout(t.Context(), 24*time.Hour)
			defer cancel()
			if err := l.Run(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("MaxAttempts %d: Run = %v, want context.DeadlineExceeded", maxAttempts, err)
			}
			// Full jitter, capped at 60 s: at least 24 h / 60 s dials.
			if n := len(fn.dialTimes()); n < 24*60 {
				t.Fatalf("MaxAttempts %d: dials in 24 h = %d, want ≥ %d", maxAttempts, n, 24*60)
			}
		})
	}
}

func TestNewLinkValidates(t *testing.T) {
	session := func(context.Context, *Conn) error { return nil }
	pipe := &Dialer{Dial: func(context.Context, string, string) (net.Conn, error) { return nil, errors.New("x") }}
	for _, tc := range []struct {
		name string
		cfg  LinkConfig
		want string // substring of the error; "" means valid
	}{
		{"valid", LinkConfig{Addrs: []string{"127.0.0.1:5060"}, Session: session}, ""},
		{"nil session", LinkConfig{Addrs: []string{"h:1"}}, "Session is nil"},
		{"no addrs", LinkConfig{Session: session}, "Addrs is empty"},
		{"empty addr", LinkConfig{Addrs: []string{"h:1", ""}, Session: session}, "Addrs[1] is empty"},
		{"no port", LinkConfig{Addrs: []string{"h"}, Session: session}, `Addrs[0] "h": address h: missing port in address`},
		{"bad network", LinkConfig{Addrs: []string{"h:1"}, Network: "udp", Session: session}, `unsupported Network "udp"`},
		{"any network with Dial", LinkConfig{Addrs: []string{"x"}, Network: "pipe", Session: session, Dialer: pipe}, ""},
		{"unix path", LinkConfig{Addrs: []string{"/run/x.sock"}, Network: "unix", Session: session}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLink(tc.cfg)
			if tc.want == "" {
				if err != nil || l == nil {
					t.Fatalf("NewLink = %v, %v; want a Link", l, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidLinkConfig) || !strings.Contains(err.Error(), tc.want) || l != nil {
				t.Fatalf("NewLink = %v, %v; want ErrInvalidLinkConfig with %q", l, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "conn: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
		})
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[LinkState]string{LinkIdle: "idle", LinkConnecting: "connecting", LinkReady: "ready",
		LinkTransientFailure: "transient-failure", LinkShutdown: "shutdown", LinkState(9): "LinkState(9)", LinkState(-1): "LinkState(-1)"} {
		if got := s.String(); got != want {
			t.Errorf("LinkState(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestClassifyDial(t *testing.T) {
	live := context.Background()
	canceled, cancel := context.WithCancel(live)
	cancel()
	expired, cancel2 := context.WithTimeout(live, -time.Second)
	defer cancel2()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		name      string
		ctx, dctx context.Context
		err       error
		want      attemptOutcome
	}{
		{"connected", live, live, nil, outcomeSuccess},
		{"Run cancelled", canceled, canceled, refused, outcomeCanceled},
		{"refused", live, live, refused, outcomeUnreachable},
		{"dial timeout", live, expired, errors.New("handshake stopped"), outcomeUnreachable},
		{"permanent refused", live, live, backoff.Permanent(refused), outcomeClientFailure},
		{"unknown host", live, live, &net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, outcomeClientFailure},
	} {
		if got := classifyDial(tc.ctx, tc.dctx, tc.err); got != tc.want {
			t.Errorf("%s: classifyDial = %s, want %s", tc.name, attemptOutcomeNames[got], attemptOutcomeNames[tc.want])
		}
	}
}

// fakeMeter records the Link's metric updates by name and attributes.
type fakeMeter struct {
	metricnoop.Meter
	mu   sync.Mutex
	sums map[string]int64 // name + "|" + encoded attributes
}

type fakeMeterProvider struct {
	metricnoop.MeterProvider
	m *fakeMeter
}

func (p fakeMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter { return p.m }

func (m *fakeMeter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return fakeCounter{add: m.adder(name)}, nil
}

func (m *fakeMeter) Int64UpDownCounter(name string, _ ...metric.Int64UpDownCounterOption) (metric.Int64UpDownCounter, error) {
	return fakeUpDown{add: m.adder(name)}, nil
}

func (m *fakeMeter) adder(name string) func(int64, []metric.AddOption) {
	return func(v int64, opts []metric.AddOption) {
		set := metric.NewAddConfig(opts).Attributes()
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.sums == nil {
			m.sums = map[string]int64{}
		}
		m.sums[name+"|"+set.Encoded(attribute.DefaultEncoder())] += v
	}
}

func (m *fakeMeter) get(name string, kv ...attribute.KeyValue) int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := attribute.NewSet(kv...)
	return m.sums[name+"|"+s.Encoded(attribute.DefaultEncoder())]
}

type fakeCounter struct {
	metricnoop.Int64Counter
	add func(int64, []metric.AddOption)
}

func (c fakeCounter) Add(_ context.Context, v int64, opts ...metric.AddOption) { c.add(v, opts) }

type fakeUpDown struct {
	metricnoop.Int64UpDownCounter
	add func(int64, []metric.AddOption)
}

func (c fakeUpDown) Add(_ context.Context, v int64, opts ...metric.AddOption) { c.add(v, opts) }

// fakeTracer records the spans the Link starts.
type fakeTracer struct {
	tracenoop.Tracer
	mu    sync.Mutex
	spans []*fakeSpan
}

type fakeTracerProvider struct {
	tracenoop.TracerProvider
	tr *fakeTracer
}

func (p fakeTracerProvider) Tracer(string, ...trace.TracerOption) trace.Tracer { return p.tr }

func (tr *fakeTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	s := &fakeSpan{name: name, attrs: startAttrs(opts)}
	tr.mu.Lock()
	tr.spans = append(tr.spans, s)
	tr.mu.Unlock()
	return trace.ContextWithSpan(ctx, s), s
}

type fakeSpan struct {
	tracenoop.Span
	name   string
	mu     sync.Mutex
	attrs  []attribute.KeyValue
	events []string
	code   codes.Code
	ended  bool
}

func (s *fakeSpan) IsRecording() bool { return true }

func (s *fakeSpan) SetAttributes(kv ...attribute.KeyValue) {
	s.mu.Lock()
	s.attrs = append(s.attrs, kv...)
	s.mu.Unlock()
}

func (s *fakeSpan) AddEvent(name string, _ ...trace.EventOption) {
	s.mu.Lock()
	s.events = append(s.events, name)
	s.mu.Unlock()
}

func (s *fakeSpan) SetStatus(c codes.Code, _ string) {
	s.mu.Lock()
	s.code = c
	s.mu.Unlock()
}

func (s *fakeSpan) End(...trace.SpanEndOption) {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
}

func (s *fakeSpan) attr(key attribute.Key) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, kv := range s.attrs {
		if kv.Key == key {
			return kv.Value.String()
		}
	}
	return ""
}

func TestLinkTelemetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		answers := map[int]dialAnswer{1: refuse, 2: accept}
		fn := newFakeNet(func(n int, _ string) dialAnswer { return answers[n] })
		session, _ := scriptedSessions()
		mp, tp := &fakeMeter{}, &fakeTracer{}
		gate := backoff.NewGate(backoff.GateConfig{Rate: -1})
		l := mustLink(t, LinkConfig{Dialer: fn.dialer(), Addrs: []string{"srv:5060"}, Session: session,
			Backoff: noJitter(), Gate: gate, MeterProvider: fakeMeterProvider{m: mp}, TracerProvider: fakeTracerProvider{tr: tp}})
		ctx, cancel := context.WithCancel(t.Context())
		wait := startRun(ctx, t, l)
		time.Sleep(time.Minute)
		synctest.Wait()

		addr, tcp := attribute.String("server.address", "srv:5060"), attribute.String("network.transport", "tcp")
		state := func(s LinkState) int64 {
			return mp.get("relink.link.connections", tcp, attribute.String("relink.link.state", s.String()))
		}
		if state(LinkReady) != 1 || state(LinkConnecting) != 0 || state(LinkTransientFailure) != 0 {
			t.Fatalf("links by state: ready %d, connecting %d, transient %d; want 1, 0, 0",
				state(LinkReady), state(LinkConnecting), state(LinkTransientFailure))
		}
		attempts := func(o string) int64 {
			return mp.get("relink.link.attempts", addr, tcp, attribute.String("relink.outcome", o))
		}
		if attempts("unreachable") != 1 || attempts("success") != 1 {
			t.Fatalf("attempts: unreachable %d, success %d; want 1, 1", attempts("unreachable"), attempts("success"))
		}
		tp.mu.Lock()
		spans := slices.Clone(tp.spans)
		tp.mu.Unlock()
		if len(spans) != 2 {
			t.Fatalf("%d spans, want one per attempt (2)", len(spans))
		}
		for i, s := range spans {
			if s.name != "relink.link.connect" || !s.ended || s.attr("server.address") != "srv:5060" ||
				s.attr("relink.link.attempt") != fmt.Sprint(i+1) || !slices.Contains(s.events, "gate admitted") {
				t.Fatalf("span %d = %+v", i, s)
			}
		}
		if spans[0].code != codes.Error || spans[0].attr("error.type") != "connection_refused" || spans[1].code == codes.Error {
			t.Fatalf("span status: %v (%s), %v", spans[0].code, spans[0].attr("error.type"), spans[1].code)
		}
		cancel()
		wait()
		if state(LinkReady) != 0 || state(LinkConnecting) != 0 || state(LinkTransientFailure) != 0 {
			t.Fatal("a stopped link is still counted")
		}
		fn.wg.Wait()
	})
}

// A Link over real loopback sockets: an echo server that is restarted on the
// same port, and one that freezes (keeps the socket open, stops answering),
// which only the Conn's probe detects.
func TestLinkLoopbackEchoServerRestart(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	srv := listenEcho(t, "")
	addr := srv.Addr()

	type result struct {
		n    int
		echo string
	}
	results := make(chan result, 16)
	var n int
	session := func(ctx context.Context, c *Conn) error {
		n++
		msg := fmt.Sprintf("hello %d\n", n)
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		results <- result{n, line}
		// Serve: discard whatever arrives (probe answers) until the end.
		_, err = io.Copy(io.Discard, c)
		if err == nil {
			err = io.EOF
		}
		return err
	}
	var rec recorder
	changes := make(chan LinkStateChange, 64)
	l := mustLink(t, LinkConfig{
		Dialer: &Dialer{Config: Config{Probe: CRLF, ProbeInterval: 200 * time.Millisecond, ProbeTimeout: 300 * time.Millisecond}},
		Addrs:  []string{addr}, Session: session,
		Backoff:       backoff.NewFactory(backoff.Exponential{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond}),
		OnStateChange: func(e LinkStateChange) { rec.record(e); changes <- e },
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	wait := startRun(ctx, t, l)

	expect := func(k int) {
		t.Helper()
		select {
		case r := <-results:
			if r.n != k || r.echo != fmt.Sprintf("hello %d\n", k) {
				t.Fatalf("session %d echoed %q", r.n, r.echo)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("session %d did not run; events %v", k, rec.events())
		}
	}
	waitLoss := func(want ...error) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e := <-changes:
				if e.From == LinkReady {
					if !slices.ContainsFunc(want, func(w error) bool { return errors.Is(e.Err, w) }) {
						t.Fatalf("connection lost with %v, want %v", e.Err, want)
					}
					return
				}
			case <-deadline:
				t.Fatalf("connection not lost; events %v", rec.events())
			}
		}
	}
	expect(1)

	// Restart: everything closed, the port refuses for 300 ms, then serves.
	srv.Close()
	waitLoss(io.EOF, syscall.ECONNRESET)
	time.Sleep(300 * time.Millisecond)
	srv = listenEcho(t, addr)
	back := time.Now()
	expect(2)
	t.Logf("session 2 ran %v after the server came back", time.Since(back))

	// Freeze: the server keeps the connection open but stops reading and
	// answering.
	start := time.Now()
	srv.Freeze()
	waitLoss(ErrUnresponsive)
	d := time.Since(start)
	if d > 2*time.Second {
		t.Fatalf("frozen peer detected after %v, want about 0.5 s (probe interval + timeout)", d)
	}
	t.Logf("frozen peer detected %v after the freeze (bound: interval 200ms + timeout 300ms)", d)
	expect(3) // the replacement connection is served

	cancel()
	if err := wait(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	srv.Close()
}

// listenEcho starts testkit's echo server on addr ("" for a new port).
func listenEcho(t *testing.T, addr string) *testkit.Echo {
	t.Helper()
	srv, err := testkit.ListenEcho(addr)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func startAttrs(opts []trace.SpanStartOption) []attribute.KeyValue {
	cfg := trace.NewSpanStartConfig(opts...)
	return cfg.Attributes()
}

// A peer that sends a request and half-closes (CloseWrite) still gets its
// reply: the Session reads io.EOF, writes the reply on the open Conn, and
// the Link reports io.EOF as the cause (issue 10, defect 3).
func TestLinkHalfClosingPeerGetsReply(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		readErr, writeErr error
	}
	results := make(chan result, 4)
	rec := &recorder{}
	l := mustLink(t, LinkConfig{
		Addrs: []string{ln.Addr().String()}, HealthyAfter: -1, Backoff: noJitter(),
		OnStateChange: rec.record,
		Session: func(_ context.Context, c *Conn) error {
			req, rerr := io.ReadAll(c) // nil at io.EOF
			if rerr == nil {
				_, rerr = c.Read(make([]byte, 1)) // what the Session sees at the end
			}
			time.Sleep(50 * time.Millisecond) // works out the reply
			_, werr := c.Write(append([]byte("reply to "), req...))
			results <- result{rerr, werr}
			return werr
		},
	})
	ctx, cancel := context.WithCancel(t.Context())
	wait := startRun(ctx, t, l)
	defer func() { cancel(); _ = wait() }()

	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	peer.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(peer)
	if string(reply) != "reply to ping" {
		t.Errorf("peer got %q (%v), want %q", reply, err, "reply to ping")
	}
	var r result
	select {
	case r = <-results:
	case <-time.After(5 * time.Second):
		t.Fatal("Session did not finish within 5 s")
	}
	if !errors.Is(r.readErr, io.EOF) || r.writeErr != nil {
		t.Errorf("Session read %v, wrote %v; want io.EOF and no error", r.readErr, r.writeErr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for l.State() != LinkTransientFailure && l.State() != LinkConnecting && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	for _, e := range rec.events() {
		if e.To == LinkTransientFailure {
			if !errors.Is(e.Err, io.EOF) {
				t.Errorf("Link's cause %v, want io.EOF", e.Err)
			}
			return
		}
	}
	t.Errorf("no LinkTransientFailure; states %v", rec.states())
}
