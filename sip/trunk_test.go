package sip

import (
	"errors"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/registrar"
)

const testPassword = "s3cr3t-Pa55"

// TestRegisterRefreshUnregister: the trunk registers (401 answered once),
// refreshes with the kept nonce (one transaction per refresh, nc counting
// up, same Call-ID, CSeq counting up) and removes its binding on exit.
func TestRegisterRefreshUnregister(t *testing.T) {
	t.Parallel()
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1})
	ua := newTestUA(t)
	var ch changes
	tr, err := NewTrunk(ua, TrunkConfig{
		Registrars:    []string{reg.URI()},
		AOR:           "sip:alice@relink.test",
		Password:      testPassword,
		Expires:       2 * time.Second,
		OnStateChange: ch.add,
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	if sc := ch.lastTo(t, Registered); sc.Expires != 2*time.Second {
		t.Errorf("granted %v, want 2s", sc.Expires)
	}
	if n := len(reg.Bindings("alice@relink.test")); n != 1 {
		t.Fatalf("%d bindings, want 1", n)
	}
	// Refreshes at 75–85 % of 2 s: three within ~5 s.
	eventually(t, 6*time.Second, "3 refreshes", func() bool {
		return reg.AoR("alice@relink.test").Requests >= 5
	})
	st := reg.AoR("alice@relink.test")
	// 401 + 200 for the first registration, then one 200 per refresh.
	for i, s := range st.Statuses {
		if (i == 0) != (s == 401) || (i > 0 && s != 200) {
			t.Fatalf("statuses %v, want 401 then only 200s", st.Statuses)
		}
	}
	if len(st.CallIDs) != 1 {
		t.Errorf("Call-IDs %v, want one", st.CallIDs)
	}
	for i := 1; i < len(st.CSeqs); i++ {
		if st.CSeqs[i] != st.CSeqs[i-1]+1 {
			t.Errorf("CSeqs %v, want counting up by one", st.CSeqs)
		}
	}
	for i := 1; i < len(st.NCs); i++ {
		if st.NCs[i] != st.NCs[i-1]+1 {
			t.Errorf("nonce counts %v, want counting up by one", st.NCs)
		}
	}
	if got := tr.Transactions(); got != uint64(st.Requests) {
		t.Errorf("trunk counted %d transactions, registrar %d", got, st.Requests)
	}
	if s := tr.State(); s != Registered {
		t.Errorf("state %v during refreshes", s)
	}
	start := time.Now()
	if err := stop(); err == nil {
		t.Error("Run returned nil, want the context's cause")
	}
	if d := time.Since(start); d > DefaultUnregisterTimeout {
		t.Errorf("Run took %v to return", d)
	}
	if n := len(reg.Bindings("alice@relink.test")); n != 0 {
		t.Errorf("%d bindings after Run returned, want 0", n)
	}
	if s := tr.State(); s != Unregistered {
		t.Errorf("state %v after Run, want unregistered", s)
	}
}

// TestValidation: bad configurations are refused with ErrInvalidConfig.
func TestValidation(t *testing.T) {
	t.Parallel()
	ua := newTestUA(t)
	good := TrunkConfig{Registrars: []string{"sip:127.0.0.1:5070;transport=tcp"}, AOR: "sip:a@b"}
	if _, err := NewTrunk(ua, good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	if _, err := NewTrunk(nil, good); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("nil UA: %v", err)
	}
	for name, mod := range map[string]func(*TrunkConfig){
		"no registrar":       func(c *TrunkConfig) { c.Registrars = nil },
		"bad registrar":      func(c *TrunkConfig) { c.Registrars = []string{"http://x"} },
		"no host":            func(c *TrunkConfig) { c.Registrars = []string{"sip:"} },
		"bad transport":      func(c *TrunkConfig) { c.Registrars = []string{"sip:x;transport=sctp"} },
		"no AOR":             func(c *TrunkConfig) { c.AOR = "" },
		"AOR not sip":        func(c *TrunkConfig) { c.AOR = "tel:+123" },
		"huge expires":       func(c *TrunkConfig) { c.Expires = 48 * time.Hour },
		"password no user":   func(c *TrunkConfig) { c.AOR = "sip:example.com"; c.Password = "x" },
		"gate two regs":      func(c *TrunkConfig) { c.Registrars = append(c.Registrars, "sip:y"); c.Gate = sharedTestGate },
		"contact with host":  func(c *TrunkConfig) { c.Contact = "sip:" },
		"header Via":         func(c *TrunkConfig) { c.Headers = []sipmsg.Header{sipmsg.NewHeader("via", "x")} },
		"header compact":     func(c *TrunkConfig) { c.Headers = []sipmsg.Header{sipmsg.NewHeader("m", "x")} },
		"header Route":       func(c *TrunkConfig) { c.Headers = []sipmsg.Header{sipmsg.NewHeader("Route", "<sip:x>")} },
		"header CRLF":        func(c *TrunkConfig) { c.Headers = []sipmsg.Header{sipmsg.NewHeader("X-A", "a\r\nVia: x")} },
		"header nil":         func(c *TrunkConfig) { c.Headers = []sipmsg.Header{nil} },
		"proxy not sip":      func(c *TrunkConfig) { c.OutboundProxy = "http://proxy" },
		"options no qualify": func(c *TrunkConfig) { c.OptionsOnly = true; c.Qualify = -1 },
	} {
		c := good
		c.Registrars = append([]string(nil), good.Registrars...)
		mod(&c)
		if _, err := NewTrunk(ua, c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: err %v, want ErrInvalidConfig", name, err)
		}
	}
}

// TestNegativeIsOff: a negative duration in TrunkConfig turns its feature
// off rather than failing validation.
func TestNegativeIsOff(t *testing.T) {
	t.Parallel()
	c := TrunkConfig{Registrars: []string{"sip:127.0.0.1:5070;transport=tcp"}, AOR: "sip:a@b",
		Expires: -1, KeepAliveTimeout: -1, RequestTimeout: -1, UnregisterTimeout: -1,
		SlowRetry: -1, FailbackInterval: -1, Qualify: -1, RegID: -1}
	r, err := c.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if r.Expires != askNone || r.keepAlive != 0 || r.RequestTimeout >= 0 ||
		r.UnregisterTimeout >= 0 || r.SlowRetry >= 0 || r.FailbackInterval >= 0 ||
		r.qualifyFor(&r.targets[0]) != 0 || r.regID >= 0 {
		t.Errorf("resolved %+v", r)
	}
	z, err := (&TrunkConfig{Registrars: c.Registrars, AOR: c.AOR}).resolve()
	if err != nil {
		t.Fatal(err)
	}
	if z.Expires != DefaultExpires || z.keepAlive != DefaultKeepAlive || z.RequestTimeout != DefaultRequestTimeout ||
		z.UnregisterTimeout != DefaultUnregisterTimeout || z.SlowRetry != DefaultSlowRetry ||
		z.qualifyFor(&z.targets[0]) != 0 || z.regID != 1 {
		t.Errorf("zero resolved %+v", z)
	}
}
