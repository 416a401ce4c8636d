package sip

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var discard = slog.New(slog.DiscardHandler)

// newTestUA returns a UserAgent from NewUA with sipgo's logs discarded,
// closed at the end of the test.
func newTestUA(t testing.TB) *UA {
	t.Helper()
	ua, err := NewUA(UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(discard)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(discard)},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ua.Close() })
	return ua
}

// newRegistrar starts an in-process registrar closed at the end of the test.
func newRegistrar(t testing.TB, cfg registrar.Config) *registrar.Registrar {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discard
	}
	r, err := registrar.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// running runs tr until the test ends (or stop is called) and returns stop,
// which cancels Run and waits for it, returning Run's error.
func running(t testing.TB, tr interface{ Run(context.Context) error }) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(15 * time.Second):
				t.Error("Run did not return within 15 s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitState waits until tr is in state s, failing after d.
func waitState(t testing.TB, tr *Trunk, s TrunkState, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		cur := tr.State()
		if cur == s {
			return
		}
		if !tr.WaitForStateChange(ctx, cur) {
			t.Fatalf("state %v after %v, want %v", tr.State(), d, s)
		}
	}
}

// eventually polls cond every 10 ms until it holds, failing after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// changes records a trunk's state changes (TrunkConfig.OnStateChange).
type changes struct {
	mu sync.Mutex
	ch []TrunkStateChange
}

func (c *changes) add(sc TrunkStateChange) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ch = append(c.ch, sc)
}

// all returns the changes recorded so far; given a state, only those to it.
func (c *changes) all(to ...TrunkState) []TrunkStateChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []TrunkStateChange
	for _, sc := range c.ch {
		if len(to) == 0 || sc.To == to[0] {
			out = append(out, sc)
		}
	}
	return out
}

func (c *changes) last(to TrunkState) (TrunkStateChange, bool) {
	if all := c.all(to); len(all) > 0 {
		return all[len(all)-1], true
	}
	return TrunkStateChange{}, false
}

var sharedTestGate = backoff.NewGate(backoff.GateConfig{})

// newForeignUA returns a UserAgent made by sipgo.NewUA directly (no relink
// read filter), closed at the end of the test.
func newForeignUA(t testing.TB) *UA {
	t.Helper()
	sua, err := sipgo.NewUA(
		sipgo.WithUserAgentTransportLayerOptions(sipmsg.WithTransportLayerLogger(discard)),
		sipgo.WithUserAgentTransactionLayerOptions(sipmsg.WithTransactionLayerLogger(discard),
			sipmsg.WithTransactionLayerTerminateOnConnClose()))
	if err != nil {
		t.Fatal(err)
	}
	ua := WrapUA(sua)
	t.Cleanup(func() { ua.Close() })
	return ua
}

// lastTo returns the last recorded change to state to, waiting briefly for
// the OnStateChange callback (it runs just after the state is set).
func (c *changes) lastTo(t testing.TB, to TrunkState) TrunkStateChange {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		if sc, ok := c.last(to); ok {
			return sc
		}
		if time.Now().After(deadline) {
			t.Fatalf("no change to %v recorded", to)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// nth returns the k-th (from 1) recorded change to state to, waiting up to
// 5 s for it.
func (c *changes) nth(t testing.TB, to TrunkState, k int) TrunkStateChange {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if all := c.all(to); len(all) >= k {
			return all[k-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no change #%d to %v recorded", k, to)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer collects log output written concurrently.
type syncBuffer = testkit.SyncBuffer

// pingedKA and pingedKTO are the keepalive settings of pingedTrunk: a silent
// flow is declared dead within 600 ms.
const pingedKA, pingedKTO = 300 * time.Millisecond, 300 * time.Millisecond

// pingedTrunk starts a trunk on a fresh UA against a fresh embedded
// registrar, its flow pinged every pingedKA, and waits until it is
// registered. Its state changes are recorded in the returned changes.
func pingedTrunk(t *testing.T, requestTimeout time.Duration) (*registrar.Registrar, *UA, *Trunk, *changes) {
	t.Helper()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ua := newTestUA(t)
	ch := new(changes)
	tr, err := NewTrunk(ua, TrunkConfig{
		Registrars: []string{reg.URI()}, AOR: "sip:alice@relink.test", Password: testPassword,
		Expires: time.Hour, KeepAlive: pingedKA, KeepAliveTimeout: pingedKTO,
		RequestTimeout: requestTimeout, OnStateChange: ch.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	running(t, tr)
	waitState(t, tr, Registered, 10*time.Second)
	return reg, ua, tr, ch
}
