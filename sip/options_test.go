package sip

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/sip/siptest"
)

func newSiptest(t *testing.T, cfg siptest.Config) *siptest.Registrar {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = discard
	}
	r, err := siptest.NewRegistrar(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestOptionsOnlyStates: an OptionsOnly trunk (an IP-authenticated carrier)
// never REGISTERs; it is Registered while its OPTIONS are answered, over UDP
// and TCP; a silent registrar is noticed within Qualify + the OPTIONS
// timeout (Backoff), and the trunk is back when it answers again; a 503 with
// Retry-After puts it in Backoff and pauses the registrar's gate: no OPTIONS
// until the Retry-After has passed.
func TestOptionsOnlyStates(t *testing.T) {
	t.Parallel()
	for _, tp := range []string{"udp", "tcp"} {
		t.Run(tp, func(t *testing.T) {
			t.Parallel()
			testOptionsOnly(t, tp)
		})
	}
}

func testOptionsOnly(t *testing.T, tp string) {
	reg := newSiptest(t, siptest.Config{Password: testPassword})
	uri := reg.URI()
	if tp == "udp" {
		uri = reg.UDPURI()
	}
	const q, qto = 300 * time.Millisecond, 400 * time.Millisecond
	gate := backoff.NewGate(backoff.GateConfig{MaxPushBack: MaxRetryAfter})
	tr, ch := trunkOn(t, TrunkConfig{OptionsOnly: true, Qualify: q, KeepAliveTimeout: qto, Gate: gate}, uri)
	running(t, tr)
	waitState(t, tr, Registered, 3*time.Second)
	eventually(t, 3*time.Second, "OPTIONS every Qualify", func() bool { return reg.Stats().Options >= 4 })
	if st := reg.Stats(); st.Registers != 0 || tr.Transactions() != 0 {
		t.Errorf("an OptionsOnly trunk sent %d REGISTERs", st.Registers)
	}
	if _, ok := tr.Binding(); ok {
		t.Error("an OptionsOnly trunk reports a Binding")
	}
	if n := len(ch.all(Registered)); n != 1 {
		t.Errorf("%d changes to Registered while answered, want 1", n)
	}

	reg.SetSilent(true)
	silent := time.Now()
	waitState(t, tr, Backoff, 3*time.Second)
	if d := time.Since(silent); d > q*106/100+qto+500*time.Millisecond {
		t.Errorf("silent registrar noticed after %v, bound %v", d, q+qto)
	}
	reg.SetSilent(false)
	waitState(t, tr, Registered, 5*time.Second)

	// The change the 503 makes is the next one to Backoff: OnStateChange
	// runs after the state is set (and waitState wakes), so the last one
	// recorded may still be the silent registrar's timeout.
	k := len(ch.all(Backoff))
	reg.SetOverload(2 * time.Second)
	waitState(t, tr, Backoff, 3*time.Second)
	if sc := ch.nth(t, Backoff, k+1); statusOf(sc.Err) != 503 {
		t.Errorf("Backoff on %v, want the 503", sc.Err)
	}
	n := reg.Stats().Options
	reg.ClearOverload()
	time.Sleep(1500 * time.Millisecond)
	if m := reg.Stats().Options; m != n {
		t.Errorf("%d OPTIONS within the Retry-After: the gate did not pause", m-n)
	}
	waitState(t, tr, Registered, 3*time.Second)
}

// optionsFake answers REGISTERs 200 and OPTIONS 200 until silentAt (then
// never), in virtual time, and records when each OPTIONS went out.
type optionsFake struct {
	start    time.Time
	silentAt time.Duration

	mu      sync.Mutex
	options []time.Duration
}

func (f *optionsFake) request(_ context.Context, req *sipmsg.Request) (clientTx, error) {
	tx := &fakeTx{res: make(chan *sipmsg.Response, 1), done: make(chan struct{})}
	now := time.Since(f.start)
	if req.Method == sipmsg.OPTIONS {
		f.mu.Lock()
		f.options = append(f.options, now)
		f.mu.Unlock()
		if now >= f.silentAt {
			return tx, nil
		}
		tx.res <- sipmsg.NewResponseFromRequest(req, 200, "OK", nil)
		return tx, nil
	}
	tx.res <- ok(req)
	return tx, nil
}

func (f *optionsFake) sent() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.options...)
}

// TestUDPQualifyByDefault: a UDP registrar is qualified with OPTIONS every
// DefaultQualify without any configuration, a TCP one is not (its flow is
// pinged); a UDP registrar that goes silent is noticed within DefaultQualify
// + the OPTIONS timeout (KeepAliveTimeout, 5 s), not after RequestTimeout
// (32 s: an OPTIONS that nobody bounded but Timer F, as before).
func TestUDPQualifyByDefault(t *testing.T) {
	ua := newTestUA(t)
	for _, tc := range []struct {
		uri   string
		every time.Duration // 0: no OPTIONS
	}{
		{"sip:registrar.test", DefaultQualify},
		{"sip:registrar.test;transport=udp", DefaultQualify},
		{"sip:registrar.test;transport=tcp", 0},
	} {
		synctest.Test(t, func(t *testing.T) {
			const silentAt = 100 * time.Second
			f := &optionsFake{start: time.Now(), silentAt: silentAt}
			ch := &changes{}
			tr := virtualTrunk(t, ua, &fakeRegistrar{}, TrunkConfig{Registrars: []string{tc.uri},
				Gate: backoff.NewGate(backoff.GateConfig{}), OnStateChange: ch.add, UnregisterTimeout: -1})
			tr.request = f.request
			runFor(tr, 3*time.Minute)
			opts := f.sent()
			if tc.every == 0 {
				if len(opts) != 0 || len(ch.all(Registered)) != 1 {
					t.Errorf("%s: %d OPTIONS, %d registrations; want none, one", tc.uri, len(opts), len(ch.all(Registered)))
				}
				return
			}
			if len(opts) < 3 || opts[0] != tc.every || opts[1] != 2*tc.every {
				t.Fatalf("%s: OPTIONS at %v, want every %v", tc.uri, opts, tc.every)
			}
			lost := ch.nth(t, Registering, 2) // the first is the initial registration
			d := lost.At.Sub(f.start) - silentAt
			if !errors.Is(lost.Err, ErrFlowDead) || d > DefaultQualify+DefaultKeepAliveTimeout {
				t.Errorf("%s: lost %v after the registrar went silent (%v), bound %v", tc.uri, d, lost.Err,
					DefaultQualify+DefaultKeepAliveTimeout)
			}
		})
	}
}

// TestUDPSilentRegistrarBound (real sockets): a UDP registrar that stops
// answering is noticed within Qualify + the qualify timeout
// (KeepAliveTimeout, 5 s by default), every other field at its default: the
// qualify OPTIONS no longer waits RequestTimeout (32 s), and the trunk
// leaves Registered with ErrFlowDead.
func TestUDPSilentRegistrarBound(t *testing.T) {
	t.Parallel()
	reg := newSiptest(t, siptest.Config{Password: testPassword})
	const q = time.Second
	tr, ch := trunkOn(t, TrunkConfig{Qualify: q, UnregisterTimeout: -1}, reg.UDPURI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 3*time.Second, "a qualify answered", func() bool { return reg.Stats().Options >= 1 })
	reg.SetSilent(true)
	silent := time.Now()
	bound := q + DefaultKeepAliveTimeout
	waitState(t, tr, Registering, bound+2*time.Second)
	d := time.Since(silent)
	t.Logf("silent UDP registrar noticed after %v (bound Qualify %v + %v)", d, q, DefaultKeepAliveTimeout)
	if sc := ch.nth(t, Registering, 2); !errors.Is(sc.Err, ErrFlowDead) {
		t.Errorf("left Registered with %v, want ErrFlowDead", sc.Err)
	}
	if d > bound+500*time.Millisecond {
		t.Errorf("noticed after %v, want ≤ %v", d, bound)
	}
}
