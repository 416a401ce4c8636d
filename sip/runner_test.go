package sip

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
)

// fakeTx is a client transaction answered by a fakeRegistrar.
type fakeTx struct {
	res  chan *sipmsg.Response
	done chan struct{}
	once sync.Once
	conn sipmsg.Connection // nil: UDP, no flow to watch
}

func (f *fakeTx) Responses() <-chan *sipmsg.Response { return f.res }
func (f *fakeTx) Done() <-chan struct{}              { return f.done }
func (f *fakeTx) Err() error                         { return sipmsg.ErrTransactionTimeout }
func (f *fakeTx) Terminate()                         { f.once.Do(func() { close(f.done) }) }
func (f *fakeTx) Connection() sipmsg.Connection      { return f.conn }

// sent is one request the runner sent, at virtual time at.
type sent struct {
	at      time.Duration // since the test began
	host    string        // the Request-URI's host
	expires string        // the Expires header, "" if none
	auth    bool
}

// fakeRegistrar answers the runner's requests after rtt with answer's
// response (nil: never), in virtual time.
type fakeRegistrar struct {
	start  time.Time
	rtt    time.Duration
	answer func(n int, req *sipmsg.Request) *sipmsg.Response

	mu  sync.Mutex
	log []sent
}

func (f *fakeRegistrar) request(_ context.Context, req *sipmsg.Request) (clientTx, error) {
	s := sent{at: time.Since(f.start), host: req.Recipient.Host,
		auth: req.GetHeader("Authorization") != nil}
	if h := req.GetHeader("Expires"); h != nil {
		s.expires = h.Value()
	}
	f.mu.Lock()
	f.log = append(f.log, s)
	n := len(f.log)
	f.mu.Unlock()
	tx := &fakeTx{res: make(chan *sipmsg.Response, 1), done: make(chan struct{})}
	if res := f.answer(n, req); res != nil {
		time.AfterFunc(f.rtt, func() { tx.res <- res })
	}
	return tx, nil
}

func (f *fakeRegistrar) sent() []sent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sent(nil), f.log...)
}

// ok answers a REGISTER 200 with the Expires asked for and its Contact.
func ok(req *sipmsg.Request) *sipmsg.Response {
	res := okBare(req)
	if h := req.GetHeader("Expires"); h != nil {
		res.AppendHeader(sipmsg.NewHeader("Expires", h.Value()))
	}
	return res
}

// okBare answers a REGISTER 200 with its Contact and nothing else.
func okBare(req *sipmsg.Request) *sipmsg.Response {
	res := sipmsg.NewResponseFromRequest(req, 200, "OK", nil)
	if c := req.Contact(); c != nil {
		res.AppendHeader(c.Clone())
	}
	return res
}

// okNoContact answers a REGISTER 200 with the Expires asked for and no
// Contact: the binding was not made.
func okNoContact(req *sipmsg.Request) *sipmsg.Response {
	res := sipmsg.NewResponseFromRequest(req, 200, "OK", nil)
	if h := req.GetHeader("Expires"); h != nil {
		res.AppendHeader(sipmsg.NewHeader("Expires", h.Value()))
	}
	return res
}

// virtualTrunk returns a trunk whose transactions go to reg, for use inside
// a synctest bubble. ua is made outside the bubble and never used for I/O
// (the Contact is configured, so no connection is asked for).
func virtualTrunk(t *testing.T, ua *UA, reg *fakeRegistrar, cfg TrunkConfig) *Trunk {
	t.Helper()
	if cfg.Registrars == nil {
		cfg.Registrars = []string{"sip:registrar.test;transport=tcp"}
		cfg.Gate = backoff.NewGate(backoff.GateConfig{})
	}
	cfg.AOR = "sip:alice@relink.test"
	cfg.Contact = "sip:alice@192.0.2.10:5060;transport=tcp"
	tr, err := NewTrunk(ua, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr.request = reg.request
	tr.lookup = nil // no DNS in a synctest bubble: names stay as configured
	reg.start = time.Now()
	return tr
}

// runFor runs tr for d of virtual time, then stops it and waits for Run.
func runFor(tr *Trunk, d time.Duration) error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	time.Sleep(d)
	cancel()
	return <-done
}

// TestRunnerRefreshSchedule: a binding granted for 100 s is refreshed
// between 75 and 85 s after each grant, and unregistered on exit.
func TestRunnerRefreshSchedule(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 20 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response { return ok(req) }}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{Expires: 100 * time.Second})
		runFor(tr, 30*time.Minute)
		log := reg.sent()
		if len(log) < 20 {
			t.Fatalf("%d REGISTERs in 30 min of 100 s bindings", len(log))
		}
		for i := 1; i < len(log)-1; i++ {
			gap := log[i].at - log[i-1].at - reg.rtt
			if gap < 75*time.Second || gap > 85*time.Second {
				t.Errorf("refresh %d came %v after the grant, want 75–85 s", i, gap)
			}
			if log[i].expires != "100" {
				t.Errorf("refresh %d asked Expires %q", i, log[i].expires)
			}
		}
		if last := log[len(log)-1]; last.expires != "0" {
			t.Errorf("last REGISTER asked Expires %q, want an unregistration", last.expires)
		}
		if s := tr.State(); s != Unregistered {
			t.Errorf("state %v after Run", s)
		}
	})
}

// TestRunnerBackoff: 500s are retried on the trunk's Backoff policy (no
// jitter here: 1 s, 2 s, 4 s...), and the first success resets it.
func TestRunnerBackoff(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(n int, req *sipmsg.Request) *sipmsg.Response {
				if n <= 4 {
					return sipmsg.NewResponseFromRequest(req, 500, "Server Error", nil)
				}
				return ok(req)
			}}
		bo := backoff.NewFactory(backoff.Exponential{Base: time.Second, Max: time.Minute,
			Jitter: backoff.NoJitter})
		var states []TrunkState
		tr := virtualTrunk(t, ua, reg, TrunkConfig{Backoff: bo,
			OnStateChange: func(sc TrunkStateChange) { states = append(states, sc.To) }})
		runFor(tr, time.Minute)
		log := reg.sent()
		if len(log) < 5 {
			t.Fatalf("%d REGISTERs", len(log))
		}
		for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
			gap := log[i+1].at - log[i].at - reg.rtt
			// The gate may add its own pacing after a failure; never less.
			if gap < want || gap > want+time.Second {
				t.Errorf("retry %d after %v, want %v", i+1, gap, want)
			}
		}
		want := []TrunkState{Registering, Backoff, Registered, Unregistered}
		if len(states) != len(want) {
			t.Fatalf("states %v, want %v", states, want)
		}
		for i := range want {
			if states[i] != want[i] {
				t.Fatalf("states %v, want %v", states, want)
			}
		}
	})
}

// TestRunnerRetryAfter: a 503 with Retry-After pauses the registrar's gate;
// the next REGISTER waits at least that long.
func TestRunnerRetryAfter(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(n int, req *sipmsg.Request) *sipmsg.Response {
				if n == 1 {
					res := sipmsg.NewResponseFromRequest(req, 503, "Busy", nil)
					res.AppendHeader(sipmsg.NewHeader("Retry-After", "30"))
					return res
				}
				return ok(req)
			}}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{})
		runFor(tr, 2*time.Minute)
		log := reg.sent()
		if len(log) < 2 {
			t.Fatalf("%d REGISTERs", len(log))
		}
		if gap := log[1].at - log[0].at; gap < 30*time.Second || gap > 40*time.Second {
			t.Errorf("REGISTER after a 503 Retry-After: 30 came %v later", gap)
		}
	})
}

// TestRunnerSlowRetry: a 403 waits SlowRetry (plus up to 10 %); a negative
// SlowRetry never retries.
func TestRunnerSlowRetry(t *testing.T) {
	ua := newTestUA(t)
	for _, slow := range []time.Duration{time.Minute, -1} {
		t.Run(strconv.FormatInt(int64(slow), 10), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
					answer: func(_ int, req *sipmsg.Request) *sipmsg.Response {
						return sipmsg.NewResponseFromRequest(req, 403, "Forbidden", nil)
					}}
				tr := virtualTrunk(t, ua, reg, TrunkConfig{SlowRetry: slow})
				runFor(tr, 150*time.Second)
				log := reg.sent()
				if slow < 0 {
					if len(log) != 1 || tr.State() != Unregistered {
						t.Errorf("%d REGISTERs with SlowRetry off", len(log))
					}
					return
				}
				if len(log) != 3 {
					t.Fatalf("%d REGISTERs in 150 s with a 1 min slow retry", len(log))
				}
				if gap := log[1].at - log[0].at - reg.rtt; gap < slow || gap > slow+slow/10 {
					t.Errorf("retry after %v, want %v–%v", gap, slow, slow+slow/10)
				}
			})
		})
	}
}

// TestRunnerTimeout: a registrar that never answers costs RequestTimeout per
// attempt and sends the trunk to Backoff; the gate then scouts.
func TestRunnerTimeout(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{answer: func(int, *sipmsg.Request) *sipmsg.Response { return nil }}
		var errs []error
		tr := virtualTrunk(t, ua, reg, TrunkConfig{RequestTimeout: 2 * time.Second, UnregisterTimeout: -1,
			OnStateChange: func(sc TrunkStateChange) {
				if sc.To == Backoff {
					errs = append(errs, sc.Err)
				}
			}})
		runFor(tr, 10*time.Second)
		log := reg.sent()
		if len(log) < 2 || len(log) > 5 {
			t.Errorf("%d REGISTERs in 10 s with a 2 s timeout", len(log))
		}
		if gap := log[1].at - log[0].at; gap < 2*time.Second {
			t.Errorf("second attempt %v after the first, before the timeout", gap)
		}
		if len(errs) != 1 || !isTimeout(errs[0]) {
			t.Errorf("Backoff errors %v, want one timeout", errs)
		}
	})
}

func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// TestRunnerAskNone: a negative Expires sends no Expires header and takes
// the registrar's grant.
func TestRunnerAskNone(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response {
				res := okBare(req)
				res.AppendHeader(sipmsg.NewHeader("Expires", "60"))
				return res
			}}
		tr := virtualTrunk(t, ua, reg, TrunkConfig{Expires: -1, UnregisterTimeout: -1})
		runFor(tr, 80*time.Second) // one refresh: at 45–51 s, the next after 90 s
		log := reg.sent()
		if len(log) != 2 || log[0].expires != "" {
			t.Fatalf("sent %+v, want two REGISTERs without Expires", log)
		}
		if gap := log[1].at - log[0].at - reg.rtt; gap < 45*time.Second || gap > 51*time.Second {
			t.Errorf("refresh after %v of a 60 s grant", gap)
		}
	})
}

// fakeConn is a TCP connection in sipgo's pool. A CRLF ping written to it
// is answered through pong (the UA's read filter), or never if pong is nil.
type fakeConn struct {
	local, remote *net.TCPAddr
	pong          func(c *fakeConn)
	mu            sync.Mutex
	pings         int
	closed        bool
}

func (c *fakeConn) LocalAddr() net.Addr           { return c.local }
func (c *fakeConn) RemoteAddr() net.Addr          { return c.remote }
func (c *fakeConn) WriteMsg(sipmsg.Message) error { return nil }
func (c *fakeConn) Ref(int) int                   { return 1 }
func (c *fakeConn) TryClose() (int, error)        { return 1, nil }
func (c *fakeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.pings++
	c.mu.Unlock()
	if c.pong != nil {
		time.AfterFunc(10*time.Millisecond, func() { c.pong(c) })
	}
	return len(p), nil
}
func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}
func (c *fakeConn) state() (pings int, closed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pings, c.closed
}
func (f *fakeTx) withConn(c sipmsg.Connection) *fakeTx { f.conn = c; return f }

// TestRunnerFlowDeath: the flow a trunk registered over goes silent; the
// runner hears of its death as an event, within KeepAlive + KeepAliveTimeout,
// evicts it from sipgo's pool, and registers again on a new connection,
// whose pings are answered.
func TestRunnerFlowDeath(t *testing.T) {
	ua := newTestUA(t)
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5060}
	c1 := &fakeConn{local: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40001}, remote: remote}
	c2 := &fakeConn{local: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 40002}, remote: remote,
		pong: func(c *fakeConn) {
			_, _ = ua.mon.filter(sipmsg.TransportReadProps{Transport: "tcp", LocalAddr: c.local,
				RemoteAddr: c.remote}, []byte("\r\n"))
		}}
	pool := ua.UserAgent().TransportLayer().Pool("tcp")
	pool.Add(remote.String(), c1)
	t.Cleanup(func() { pool.Delete(remote.String()) })
	synctest.Test(t, func(t *testing.T) {
		reg := &fakeRegistrar{rtt: 20 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response { return ok(req) }}
		var mu sync.Mutex
		var changes []TrunkStateChange
		tr := virtualTrunk(t, ua, reg, TrunkConfig{KeepAlive: 4 * time.Second, KeepAliveTimeout: 2 * time.Second,
			UnregisterTimeout: -1,
			OnStateChange:     func(sc TrunkStateChange) { mu.Lock(); changes = append(changes, sc); mu.Unlock() }})
		conn := sipmsg.Connection(c1)
		tr.request = func(ctx context.Context, req *sipmsg.Request) (clientTx, error) {
			tx, err := reg.request(ctx, req)
			if _, closed := c1.state(); closed && conn == c1 {
				conn = c2
				pool.Add(remote.String(), c2) // sipgo dials anew
			}
			return tx.(*fakeTx).withConn(conn), err
		}
		runFor(tr, 20*time.Second)
		pings, closed := c1.state()
		if pings != 1 || !closed {
			t.Errorf("silent flow: %d pings, closed %v; want 1 ping, then closed", pings, closed)
		}
		if pings, closed := c2.state(); pings < 3 || closed {
			t.Errorf("answering flow: %d pings, closed %v; want a ping every 3.2–4 s, open", pings, closed)
		}
		if got := pool.Get(remote.String()); got == c1 {
			t.Error("the dead flow is still in sipgo's pool")
		}
		mu.Lock()
		defer mu.Unlock()
		var lost *TrunkStateChange
		regs := 0
		for i, sc := range changes {
			if sc.From == Registered && lost == nil {
				lost = &changes[i]
			}
			if sc.To == Registered {
				regs++
			}
		}
		if lost == nil || !errors.Is(lost.Err, ErrFlowDead) || !isTimeout(lost.Err) {
			t.Fatalf("changes %+v: no loss by a silent flow", changes)
		}
		// Silent since the REGISTER went out: dead within 4 s + 2 s.
		if at := lost.At.Sub(reg.start); at < 3*time.Second || at > 6*time.Second+reg.rtt {
			t.Errorf("flow declared dead %v after it went silent, want within 3.2–6 s", at)
		}
		if regs != 2 {
			t.Errorf("registered %d times, want 2 (before and after the flow died)", regs)
		}
	})
}

// TestRunnerFailback: a trunk whose first registrar answers 503 registers
// with the second, tries the first every FailbackInterval, and once the
// first accepts it removes its binding from the second.
func TestRunnerFailback(t *testing.T) {
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		var reg *fakeRegistrar
		reg = &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response {
				if req.Recipient.Host == "primary.test" && time.Since(reg.start) < time.Minute {
					return sipmsg.NewResponseFromRequest(req, 503, "Busy", nil)
				}
				return ok(req)
			}}
		var mu sync.Mutex
		var dests []string
		tr := virtualTrunk(t, ua, reg, TrunkConfig{
			Registrars:       []string{"sip:primary.test;transport=tcp", "sip:backup.test;transport=tcp"},
			FailbackInterval: 30 * time.Second,
			OnStateChange: func(sc TrunkStateChange) {
				if sc.To == Registered {
					mu.Lock()
					dests = append(dests, sc.Destination)
					mu.Unlock()
				}
			}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- tr.Run(ctx) }()
		time.Sleep(2 * time.Minute)
		cur := tr.Registrar()
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		// Failback is no state change (Registered stays): Registrar() says.
		if len(dests) != 1 || dests[0] != "sip:backup.test;transport=tcp" || cur != "sip:primary.test;transport=tcp" {
			t.Fatalf("registered with %v, on %q at the end; want the backup, then the primary", dests, cur)
		}
		var unregBackup bool
		var tries []time.Duration
		for _, s := range reg.sent() {
			if s.host == "backup.test" && s.expires == "0" {
				unregBackup = true
			}
			if s.host == "primary.test" {
				tries = append(tries, s.at)
			}
		}
		if !unregBackup {
			t.Error("the backup's binding was not removed after failback")
		}
		// The first try at 0, then one per FailbackInterval while on the
		// backup: at 30 s (503), at 60 s (200). Then nothing until the
		// unregistration at 120 s: the failback's REGISTER was the refresh.
		if len(tries) != 4 || tries[1] < 30*time.Second || tries[2] < 60*time.Second ||
			tries[2] > 61*time.Second || tries[3] != 2*time.Minute {
			t.Errorf("REGISTERs to the primary at %v; want 0, 30 s, 60 s, 120 s", tries)
		}
	})
}
