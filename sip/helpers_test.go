package sip

import (
	"bytes"
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

// changes records a trunk's state changes.
type changes struct {
	mu sync.Mutex
	ch []TrunkStateChange
}

func (c *changes) add(sc TrunkStateChange) {
	c.mu.Lock()
	c.ch = append(c.ch, sc)
	c.mu.Unlock()
}

func (c *changes) all() []TrunkStateChange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]TrunkStateChange(nil), c.ch...)
}

func (c *changes) last(to TrunkState) (TrunkStateChange, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.ch) - 1; i >= 0; i-- {
		if c.ch[i].To == to {
			return c.ch[i], true
		}
	}
	return TrunkStateChange{}, false
}

// syncBuffer is a bytes.Buffer safe for concurrent writes (log output).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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
		c.mu.Lock()
		n := 0
		for _, sc := range c.ch {
			if sc.To == to {
				if n++; n == k {
					c.mu.Unlock()
					return sc
				}
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no change #%d to %v recorded", k, to)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
