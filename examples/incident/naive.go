package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/testkit"
)

// naiveFleet is what a gateway without relink does: sipgo with its defaults
// (one UserAgent, one Client, so one pooled TCP connection per registrar
// address), each 401 answered on its fresh challenge as sipgo's DoDigestAuth
// does (testkit's Registerer with FreshChallenge), a refresh at 90 % of the
// granted expiry, and on any failure — an error, a timeout, a 503 — another
// attempt at once.
type naiveFleet struct {
	ua     *sipgo.UserAgent
	client *sipgo.Client
	trunks []*naiveTrunk
	marks  *marks
	wg     sync.WaitGroup
}

// naiveTrunk is one registration of the naive gateway.
type naiveTrunk struct {
	user     string
	believes atomic.Bool // the gateway thinks it is registered
	failed   atomic.Bool // a REGISTER failed after the freeze
	reg      *testkit.Registerer
	rec      trunkRec
}

// acted reports whether t's own timers have had their say since the freeze:
// it registered again after the restore, or a REGISTER failed and it sent
// another.
func (t *naiveTrunk) acted() bool {
	if t.rec.recover.Load() != 0 && t.believes.Load() {
		return true
	}
	return t.failed.Load() && t.rec.tx()-t.rec.txFreeze >= 2
}

func newNaiveFleet(n int, hostPort, domain, password string, m *marks) (*naiveFleet, error) {
	ua, err := sipgo.NewUA() // sipgo's defaults
	if err != nil {
		return nil, fmt.Errorf("naive: %w", err)
	}
	client, err := sipgo.NewClient(ua)
	if err != nil {
		ua.Close()
		return nil, fmt.Errorf("naive: %w", err)
	}
	f := &naiveFleet{ua: ua, client: client, marks: m}
	for i := range n {
		user := fmt.Sprintf("naive%04d", i)
		reg, err := testkit.NewRegisterer(testkit.RegisterConfig{
			Client:    client,
			Registrar: "sip:" + hostPort + ";transport=tcp", // the freeze proxy in front of the registrar
			User:      user, Password: password, Domain: domain,
			Contact:        "sip:" + user + "@127.0.0.1:5060;transport=tcp",
			FreshChallenge: true, // sipgo's DoDigestAuth
		})
		if err != nil {
			ua.Close()
			return nil, fmt.Errorf("naive: %w", err)
		}
		t := &naiveTrunk{user: user, reg: reg}
		t.rec.name, t.rec.tx = t.user, reg.Transactions
		f.trunks = append(f.trunks, t)
	}
	return f, nil
}

// start runs every trunk until ctx ends.
func (f *naiveFleet) start(ctx context.Context) {
	for _, t := range f.trunks {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.run(ctx, t)
		}()
	}
}

// stop waits for the trunks (after ctx ended) and closes the UserAgent. The
// naive gateway does not unregister: its bindings expire by themselves.
func (f *naiveFleet) stop() {
	f.wg.Wait()
	f.client.Close()
	f.ua.Close()
}

// acted reports whether every trunk has acted since the freeze (see
// naiveTrunk.acted).
func (f *naiveFleet) acted() bool {
	for _, t := range f.trunks {
		if !t.acted() {
			return false
		}
	}
	return true
}

// believed counts the trunks that think they are registered.
func (f *naiveFleet) believed() int {
	n := 0
	for _, t := range f.trunks {
		if t.believes.Load() {
			n++
		}
	}
	return n
}

func (f *naiveFleet) run(ctx context.Context, t *naiveTrunk) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for ctx.Err() == nil {
		grant, err := register(ctx, t.reg)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			// Any failure: try again at once.
			if t.believes.Swap(false) {
				t.rec.lost(now, f.marks)
			}
			if fr := f.marks.freeze.Load(); fr != 0 && now.UnixNano() >= fr {
				t.failed.Store(true)
			}
			last := fmt.Sprintf("failed at %+.1f s (%v)", now.Sub(f.marks.start).Seconds(), err)
			t.rec.last.Store(&last)
			continue
		}
		t.believes.Store(true)
		t.rec.registered(now, f.marks)
		timer.Reset(grant * 9 / 10)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// register sends one REGISTER and, when challenged, the answer on a fresh
// challenge, as sipgo's DoDigestAuth does; it returns the granted expiry.
func register(ctx context.Context, r *testkit.Registerer) (time.Duration, error) {
	res, err := r.Register(ctx, 3600)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != sipmsg.StatusOK {
		return 0, fmt.Errorf("naive: %d %s", res.StatusCode, res.Reason)
	}
	return testkit.Granted(res, 3600*time.Second), nil
}
