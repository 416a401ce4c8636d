package sip

import (
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/registrar"
)

// events records the requests a registrar answered.
type events struct {
	mu sync.Mutex
	ev []registrar.Event
}

func (e *events) add(ev registrar.Event) {
	e.mu.Lock()
	e.ev = append(e.ev, ev)
	e.mu.Unlock()
}

func (e *events) registers() []registrar.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []registrar.Event
	for _, ev := range e.ev {
		if ev.Method == "REGISTER" {
			out = append(out, ev)
		}
	}
	return out
}

// trunkOn builds a trunk on a fresh UA for the registrar URIs, with test
// defaults applied to zero fields of cfg.
func trunkOn(t *testing.T, cfg TrunkConfig, uris ...string) (*Trunk, *changes) {
	t.Helper()
	ch := &changes{}
	cfg.Registrars = uris
	if cfg.AOR == "" {
		cfg.AOR = "sip:alice@relink.test"
	}
	if cfg.Password == "" {
		cfg.Password = testPassword
	}
	cfg.OnStateChange = ch.add
	tr, err := NewTrunk(newTestUA(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, ch
}

func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// TestStaleNonce: a refresh on an expired nonce gets 401 stale=true, which
// the trunk answers with the new nonce, staying Registered.
func TestStaleNonce(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1,
		NonceLifetime: 500 * time.Millisecond})
	tr, ch := trunkOn(t, TrunkConfig{Expires: time.Second}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 5*time.Second, "a stale challenge answered", func() bool {
		st := reg.Stats()
		return st.Stale >= 2 && st.ByStatus[200] >= st.Stale+1
	})
	// Only the first challenge is not stale: every stale one was answered
	// with the new nonce, none was taken for rejected credentials.
	if st := reg.Stats(); st.ByStatus[401] != st.Stale+1 && st.ByStatus[401] != st.Stale+2 {
		t.Errorf("401s %d, stale %d", st.ByStatus[401], st.Stale)
	}
	for _, sc := range ch.all() {
		if sc.To != Registered && sc.To != Registering {
			t.Errorf("state change %v → %v (%v) on a stale nonce", sc.From, sc.To, sc.Err)
		}
	}
}

// TestWrongPassword: credentials rejected (401 to a fresh challenge) →
// Failed with ErrCredentialsRejected, and no more than one attempt per
// slow-retry interval.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	for _, badStatus := range []int{401, 403} {
		t.Run(strconv.Itoa(badStatus), func(t *testing.T) {
			var ev events
			reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1,
				BadCredentialsStatus: badStatus, OnRequest: ev.add})
			tr, ch := trunkOn(t, TrunkConfig{Password: "wrong", SlowRetry: time.Second}, reg.URI())
			running(t, tr)
			waitState(t, tr, Failed, 5*time.Second)
			sc := ch.lastTo(t, Failed)
			if badStatus == 401 && !errors.Is(sc.Err, ErrCredentialsRejected) {
				t.Errorf("err %v, want ErrCredentialsRejected", sc.Err)
			}
			if got := statusOf(sc.Err); got != badStatus {
				t.Errorf("status %d, want %d", got, badStatus)
			}
			time.Sleep(2500 * time.Millisecond)
			// Attempts at 0, ≥1 s, ≥2 s: at most 3, each a challenge and
			// one answer.
			// An attempt is a burst of REGISTERs (a challenge and its
			// answer, or one REGISTER on the kept nonce).
			regs := ev.registers()
			attempts := 0
			for i, e := range regs {
				if i == 0 || e.Time.Sub(regs[i-1].Time) > 500*time.Millisecond {
					attempts++
				}
			}
			if attempts < 2 || attempts > 3 {
				t.Errorf("%d attempts in 2.5 s with SlowRetry 1 s (%d REGISTERs), want 2–3", attempts, len(regs))
			}
			if len(regs) > 2*attempts {
				t.Errorf("%d REGISTERs for %d attempts: more than one answer per challenge", len(regs), attempts)
			}
		})
	}
}

// TestClientFailures: 403, 404 and 6xx put the trunk in Failed with a slow
// retry, and recover once the registrar accepts.
func TestClientFailures(t *testing.T) {
	t.Parallel()
	for _, code := range []int{403, 404, 603} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			var ev events
			reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, OnRequest: ev.add})
			reg.SetFault(registrar.Fault{Code: code, Times: 1})
			tr, ch := trunkOn(t, TrunkConfig{SlowRetry: time.Second}, reg.URI())
			running(t, tr)
			waitState(t, tr, Failed, 5*time.Second)
			sc := ch.lastTo(t, Failed)
			if got := statusOf(sc.Err); got != code {
				t.Errorf("status %d, want %d", got, code)
			}
			failedAt := time.Now()
			waitState(t, tr, Registered, 5*time.Second)
			if d := time.Since(failedAt); d < 900*time.Millisecond {
				t.Errorf("retried after %v, want ≥ SlowRetry (1 s)", d)
			}
		})
	}
}

// TestIntervalTooBrief: 423 with Min-Expires is retried at once with it;
// without Min-Expires, with twice the interval.
func TestIntervalTooBrief(t *testing.T) {
	t.Parallel()
	t.Run("Min-Expires", func(t *testing.T) {
		reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: 5 * time.Second})
		tr, ch := trunkOn(t, TrunkConfig{Expires: 2 * time.Second}, reg.URI())
		running(t, tr)
		waitState(t, tr, Registered, 5*time.Second)
		if sc := ch.lastTo(t, Registered); sc.Expires != 5*time.Second {
			t.Errorf("granted %v, want Min-Expires 5s", sc.Expires)
		}
		if st := reg.Stats(); st.ByStatus[423] != 1 {
			t.Errorf("%d 423s, want 1", st.ByStatus[423])
		}
	})
	t.Run("double", func(t *testing.T) {
		reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
		reg.SetFault(registrar.Fault{Code: 423, Times: 1})
		tr, ch := trunkOn(t, TrunkConfig{Expires: 3 * time.Second}, reg.URI())
		running(t, tr)
		waitState(t, tr, Registered, 5*time.Second)
		if sc := ch.lastTo(t, Registered); sc.Expires != 6*time.Second {
			t.Errorf("granted %v, want twice 3s", sc.Expires)
		}
		for _, sc := range ch.all() {
			if sc.To == Backoff || sc.To == Failed {
				t.Errorf("went %v on a 423", sc.To)
			}
		}
	})
}

// TestGrant: a shorter grant is obeyed; the Contact's expires parameter
// wins over the Expires header.
func TestGrant(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1,
		MaxExpires: 2 * time.Second,
		ModifyResponse: func(req *sipmsg.Request, res *sipmsg.Response) {
			if res.StatusCode == 200 {
				res.AppendHeader(sipmsg.NewHeader("Expires", "3600"))
			}
		}})
	tr, ch := trunkOn(t, TrunkConfig{Expires: time.Hour}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if sc := ch.lastTo(t, Registered); sc.Expires != 2*time.Second {
		t.Errorf("granted %v, want the Contact's 2s", sc.Expires)
	}
	// It refreshes before the short grant runs out.
	eventually(t, 3*time.Second, "a refresh", func() bool {
		return reg.AoR("alice@relink.test").Requests >= 3
	})
}

// TestUnreachable: no answer (timeouts) is reported to the gate as
// Unreachable: the gate closes and scouts; the trunk comes back within
// about ScoutMax of the registrar answering again, with no long private
// backoff.
func TestUnreachable(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	gate := backoff.NewGate(backoff.GateConfig{})
	reg.SetSilent(true)
	tr, ch := trunkOn(t, TrunkConfig{RequestTimeout: 200 * time.Millisecond, Gate: gate, KeepAlive: -1}, reg.URI())
	running(t, tr)
	waitState(t, tr, Backoff, 5*time.Second)
	sc := ch.lastTo(t, Backoff)
	if !errors.Is(sc.Err, ErrTimeout) {
		t.Errorf("err %v, want ErrTimeout", sc.Err)
	}
	eventually(t, 3*time.Second, "the gate closes", func() bool { return gate.State() == backoff.GateClosed })
	time.Sleep(2 * time.Second) // scouts go on
	if st := gate.Stats(); st.Unreachable < 3 {
		t.Errorf("%d unreachable outcomes in 2 s of scouting, want ≥ 3", st.Unreachable)
	}
	reg.SetSilent(false)
	back := time.Now()
	waitState(t, tr, Registered, 5*time.Second)
	if d := time.Since(back); d > backoff.DefaultScoutMax+time.Second {
		t.Errorf("registered %v after the registrar answered again, want ≤ ScoutMax + 1 s", d)
	}
	if gate.State() != backoff.GateOpen {
		t.Errorf("gate %v after success", gate.State())
	}
}

// TestRequestTimeout408: a 408 is treated as unreachable.
func TestRequestTimeout408(t *testing.T) {
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg.SetFault(registrar.Fault{Code: 408, Times: 2})
	gate := backoff.NewGate(backoff.GateConfig{})
	tr, ch := trunkOn(t, TrunkConfig{Gate: gate}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 10*time.Second)
	if sc := ch.lastTo(t, Backoff); statusOf(sc.Err) != 408 {
		t.Errorf("backoff %v, want a 408", sc.Err)
	}
	if st := gate.Stats(); st.Unreachable != 2 {
		t.Errorf("gate saw %d unreachable, want 2", st.Unreachable)
	}
}

// TestServerError: 500, 502 and 504 wait for the trunk's Backoff policy,
// and are reported to the gate as overload.
func TestServerError(t *testing.T) {
	t.Parallel()
	for _, code := range []int{500, 502, 504} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			var ev events
			reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, OnRequest: ev.add})
			reg.SetFault(registrar.Fault{Code: code, Times: 2})
			gate := backoff.NewGate(backoff.GateConfig{})
			tr, ch := trunkOn(t, TrunkConfig{Gate: gate,
				Backoff: backoff.NewFactory(backoff.Exponential{Base: 300 * time.Millisecond, Jitter: backoff.NoJitter})},
				reg.URI())
			running(t, tr)
			waitState(t, tr, Registered, 10*time.Second)
			if sc := ch.lastTo(t, Backoff); statusOf(sc.Err) != code {
				t.Errorf("backoff %v, want %d", sc.Err, code)
			}
			regs := ev.registers()
			// 500 at 0, 500 at +300 ms, then 401/200 at +900 ms.
			if d := regs[1].Time.Sub(regs[0].Time); d < 250*time.Millisecond {
				t.Errorf("second attempt %v after the first, want ≥ 300 ms (the policy)", d)
			}
			if d := regs[2].Time.Sub(regs[1].Time); d < 550*time.Millisecond {
				t.Errorf("third attempt %v after the second, want ≥ 600 ms (the policy doubled)", d)
			}
			if st := gate.Stats(); st.Overloaded != 2 {
				t.Errorf("gate saw %d overloads, want 2", st.Overloaded)
			}
		})
	}
}

// TestServiceUnavailable: a 503 with Retry-After pauses the gate (no
// REGISTER for that long); without it, the trunk backs off like a 500 and
// moves on to its next registrar.
func TestServiceUnavailable(t *testing.T) {
	t.Parallel()
	t.Run("Retry-After", func(t *testing.T) {
		var ev events
		reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, OnRequest: ev.add})
		reg.SetFault(registrar.Fault{Code: 503, RetryAfter: 2 * time.Second, Times: 1})
		gate := backoff.NewGate(backoff.GateConfig{})
		tr, ch := trunkOn(t, TrunkConfig{Gate: gate}, reg.URI())
		running(t, tr)
		waitState(t, tr, Registered, 10*time.Second)
		sc := ch.lastTo(t, Backoff)
		var se *StatusError
		if !errors.As(sc.Err, &se) || se.Code != 503 || se.RetryAfter != 2*time.Second {
			t.Fatalf("backoff %v, want 503 with Retry-After 2s", sc.Err)
		}
		regs := ev.registers()
		if d := regs[1].Time.Sub(regs[0].Time); d < 2*time.Second {
			t.Errorf("next REGISTER %v after the 503, want ≥ Retry-After 2s", d)
		}
	})
	t.Run("next registrar", func(t *testing.T) {
		reg1 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
		reg2 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
		reg1.SetFault(registrar.Fault{Code: 503})
		tr, _ := trunkOn(t, TrunkConfig{}, reg1.URI(), reg2.URI())
		running(t, tr)
		waitState(t, tr, Registered, 10*time.Second)
		if got := tr.Registrar(); got != reg2.URI() {
			t.Errorf("registered with %s, want the second %s", got, reg2.URI())
		}
		if n := len(reg2.Bindings("alice@relink.test")); n != 1 {
			t.Errorf("%d bindings on the second registrar", n)
		}
	})
}

// TestRedirect: a 3xx is followed to its first Contact.
func TestRedirect(t *testing.T) {
	t.Parallel()
	reg1 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg2 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg1.SetFault(registrar.Fault{Code: 302, Contact: reg2.URI()})
	tr, ch := trunkOn(t, TrunkConfig{}, reg1.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if n := len(reg2.Bindings("alice@relink.test")); n != 1 {
		t.Errorf("%d bindings at the redirect target, want 1", n)
	}
	for _, sc := range ch.all() {
		if sc.To == Backoff || sc.To == Failed {
			t.Errorf("went %v on a 302", sc.To)
		}
	}
	// A redirect loop is bounded.
	reg3 := newRegistrar(t, registrar.Config{})
	reg3.SetFault(registrar.Fault{Code: 302, Contact: reg3.URI()})
	tr3, ch3 := trunkOn(t, TrunkConfig{}, reg3.URI())
	running(t, tr3)
	waitState(t, tr3, Backoff, 5*time.Second)
	if sc := ch3.lastTo(t, Backoff); !errors.Is(sc.Err, ErrTooManyRedirects) {
		t.Errorf("err %v, want ErrTooManyRedirects", sc.Err)
	}
	if n := reg3.Stats().Registers; n != maxRedirects+1 {
		t.Errorf("%d REGISTERs in a redirect loop, want %d", n, maxRedirects+1)
	}
}

// TestFailover: the trunk moves to the next registrar when the first is
// unreachable, and returns to the first once it is healthy, removing its
// binding from the backup.
func TestFailover(t *testing.T) {
	t.Parallel()
	reg1 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg2 := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	reg1.SetSilent(true)
	tr, _ := trunkOn(t, TrunkConfig{RequestTimeout: 300 * time.Millisecond, FailbackInterval: time.Second},
		reg1.URI(), reg2.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if got := tr.Registrar(); got != reg2.URI() {
		t.Fatalf("registered with %s, want the backup", got)
	}
	reg1.SetSilent(false)
	eventually(t, 5*time.Second, "failback to the first registrar", func() bool {
		return tr.Registrar() == reg1.URI() && len(reg1.Bindings("alice@relink.test")) == 1
	})
	eventually(t, 2*time.Second, "binding removed from the backup", func() bool {
		return len(reg2.Bindings("alice@relink.test")) == 0
	})
	if s := tr.State(); s != Registered {
		t.Errorf("state %v after failback", s)
	}
}

// TestProxyAuth: a 407 is answered with Proxy-Authorization and kept too.
func TestProxyAuth(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1, ProxyAuth: true})
	tr, _ := trunkOn(t, TrunkConfig{Expires: time.Second}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 5*time.Second, "refreshes on the kept nonce", func() bool {
		return reg.Stats().NonceReuse >= 2
	})
	if st := reg.Stats(); st.ByStatus[407] != 1 {
		t.Errorf("%d 407s, want 1", st.ByStatus[407])
	}
}
