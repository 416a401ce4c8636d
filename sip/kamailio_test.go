package sip

import (
	"fmt"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
)

// Integration tests against a real Kamailio registrar (internal/kamailio).
// They skip without kamailio, and fail instead with RELINK_REQUIRE_KAMAILIO=1.

func kamTrunk(t *testing.T, k *kamailio.Instance, user string, cfg TrunkConfig) (*Trunk, *changes) {
	t.Helper()
	cfg.Registrars = []string{k.URI()}
	cfg.AOR = "sip:" + user + "@relink.test"
	if cfg.Password == "" {
		cfg.Password = k.Password()
	}
	ch := &changes{}
	cfg.OnStateChange = ch.add
	tr, err := NewTrunk(newTestUA(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, ch
}

func kamStats(t *testing.T, k *kamailio.Instance) kamailio.Stats {
	t.Helper()
	st, err := k.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestKamailioRegister: register (one challenge), refreshes that are one
// transaction each (kept nonce, nc counting up), the same Call-ID with CSeq
// counting up, then unregistration on exit.
func TestKamailioRegister(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{MinExpires: -1})
	tr, ch := kamTrunk(t, k, "alice", TrunkConfig{Expires: 2 * time.Second})
	stop := running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if sc := ch.lastTo(t, Registered); sc.Expires != 2*time.Second {
		t.Errorf("granted %v", sc.Expires)
	}
	c1, err := k.Contacts("alice")
	if err != nil || len(c1) != 1 {
		t.Fatalf("contacts %v %v", c1, err)
	}
	eventually(t, 8*time.Second, "3 refreshes", func() bool { return kamStats(t, k).Saved >= 4 })
	st := kamStats(t, k)
	c2, _ := k.Contacts("alice")
	t.Logf("kamailio: %+v; trunk sent %d REGISTERs", st, tr.Transactions())
	if st.Challenges != 1 || st.Stale != 0 {
		t.Errorf("%d challenges (%d stale), want the first only: refreshes must reuse the nonce", st.Challenges, st.Stale)
	}
	if st.Registers != st.Saved+1 {
		t.Errorf("%d REGISTERs for %d saved: a refresh must be one transaction", st.Registers, st.Saved)
	}
	if len(c2) != 1 || c2[0].CallID != c1[0].CallID || c2[0].CSeq <= c1[0].CSeq {
		t.Errorf("contacts %+v then %+v: want the same Call-ID, CSeq counting up", c1, c2)
	}
	if got := tr.Transactions(); got != uint64(st.Registers) {
		t.Errorf("trunk counted %d REGISTERs, kamailio %d", got, st.Registers)
	}
	stop()
	if c, _ := k.Contacts("alice"); len(c) != 0 {
		t.Errorf("contacts after Run returned: %+v", c)
	}
}

// TestKamailioWrongPassword: Kamailio's 403 for a wrong password puts the
// trunk in Failed, with at most one attempt per slow-retry interval.
func TestKamailioWrongPassword(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{})
	tr, ch := kamTrunk(t, k, "mallory", TrunkConfig{Password: "wrong", SlowRetry: time.Second})
	running(t, tr)
	waitState(t, tr, Failed, 5*time.Second)
	if sc := ch.lastTo(t, Failed); statusOf(sc.Err) != 403 {
		t.Errorf("err %v, want 403", sc.Err)
	}
	start := time.Now()
	f0 := kamStats(t, k).Forbidden
	time.Sleep(3500 * time.Millisecond)
	st := kamStats(t, k)
	window := time.Since(start)
	attempts := st.Forbidden - f0
	t.Logf("%d attempts in %v with SlowRetry 1 s; kamailio %+v", attempts, window, st)
	if max := int(window/time.Second) + 1; attempts > max || attempts < 2 {
		t.Errorf("%d attempts in %v, want 2–%d", attempts, window, max)
	}
	if st.Registers > st.Forbidden+1 {
		t.Errorf("%d REGISTERs for %d 403s: retries should reuse the nonce", st.Registers, st.Forbidden)
	}
}

// TestKamailioOverload: with the overload switch on, Kamailio answers 503
// with Retry-After: every trunk of a fleet holds off for that long, then all
// register once it is cleared.
func TestKamailioOverload(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{})
	if err := k.SetOverload(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	f := NewFleet(newTestUA(t), FleetConfig{})
	const n = 50
	for i := range n {
		if _, err := f.Add(TrunkConfig{Registrars: []string{k.URI()},
			AOR: fmt.Sprintf("sip:t%d@relink.test", i), Password: k.Password()}); err != nil {
			t.Fatal(err)
		}
	}
	running(t, f)
	eventually(t, 3*time.Second, "a 503", func() bool { return kamStats(t, k).Overload > 0 })
	time.Sleep(300 * time.Millisecond) // attempts in flight land
	r0 := kamStats(t, k).Registers
	time.Sleep(2 * time.Second)
	st := kamStats(t, k)
	t.Logf("during the Retry-After: %d REGISTERs before, %d after 2 s; %d 503s for %d trunks", r0, st.Registers, st.Overload, n)
	if st.Registers != r0 {
		t.Errorf("%d REGISTERs during the 3 s Retry-After", st.Registers-r0)
	}
	if err := k.ClearOverload(); err != nil {
		t.Fatal(err)
	}
	waitFleet(t, f, Registered, n, 15*time.Second)
	st = kamStats(t, k)
	if st.Overload > n {
		t.Errorf("%d 503s for %d trunks", st.Overload, n)
	}
	if st.Contacts != n {
		t.Errorf("%d contacts, want %d", st.Contacts, n)
	}
}

// TestKamailioIntervalTooBrief: Kamailio's 423 with Min-Expires is obeyed at
// once.
func TestKamailioIntervalTooBrief(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{MinExpires: time.Minute})
	tr, ch := kamTrunk(t, k, "bob", TrunkConfig{Expires: 10 * time.Second})
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if sc := ch.lastTo(t, Registered); sc.Expires != time.Minute {
		t.Errorf("granted %v, want Min-Expires 60s", sc.Expires)
	}
	c, _ := k.Contacts("bob")
	if len(c) != 1 || c[0].Expires < 55 {
		t.Errorf("contacts %+v", c)
	}
	for _, sc := range ch.all() {
		if sc.To == Backoff || sc.To == Failed {
			t.Errorf("went %v (%v)", sc.To, sc.Err)
		}
	}
}
