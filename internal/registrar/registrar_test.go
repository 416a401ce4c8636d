package registrar

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newRegisterer returns a testkit.Registerer for user on a sipgo client of
// its own, binding "sip:<user>@127.0.0.1:5999".
func newRegisterer(t testing.TB, registrarURI, user, pw string) *testkit.Registerer {
	t.Helper()
	return newRegistererOn(t, testkit.NewSipgoClient(t), registrarURI, user, pw)
}

func newRegistererOn(t testing.TB, cl *sipgo.Client, registrarURI, user, pw string) *testkit.Registerer {
	t.Helper()
	c, err := testkit.NewRegisterer(testkit.RegisterConfig{Client: cl, Registrar: registrarURI,
		User: user, Password: pw, Contact: "sip:" + user + "@127.0.0.1:5999"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// do sends req within 10 s and fails the test on a transport error.
func do(t testing.TB, c *testkit.Registerer, req *sipmsg.Request) *sipmsg.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Do(ctx, req)
	if err != nil {
		t.Fatalf("REGISTER: %v", err)
	}
	return res
}

// send sends c's next REGISTER; expires < 0 means no Expires header.
func send(t testing.TB, c *testkit.Registerer, expires int) *sipmsg.Response {
	t.Helper()
	return do(t, c, c.Request(expires))
}

// register sends a REGISTER and answers one challenge, keeping the nonce.
func register(t testing.TB, c *testkit.Registerer, expires int) *sipmsg.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Register(ctx, expires)
	if err != nil {
		t.Fatalf("REGISTER: %v", err)
	}
	return res
}

func keep(t testing.TB, c *testkit.Registerer, res *sipmsg.Response) {
	t.Helper()
	if err := c.Keep(res); err != nil {
		t.Fatal(err)
	}
}

// withContactExpires adds an expires parameter to req's Contact.
func withContactExpires(req *sipmsg.Request, v string) *sipmsg.Request {
	req.Contact().Params.Add("expires", v)
	return req
}

func newRegistrar(t testing.TB, cfg Config) *Registrar {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func header(res *sipmsg.Response, name string) string {
	if h := res.GetHeader(name); h != nil {
		return h.Value()
	}
	return ""
}

func contactExpiresOf(t testing.TB, res *sipmsg.Response) int {
	t.Helper()
	c := res.Contact()
	if c == nil {
		t.Fatalf("no Contact in %d", res.StatusCode)
	}
	v, ok := c.Params.Get("expires")
	if !ok {
		t.Fatal("Contact without expires")
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRegisterWithDigest(t *testing.T) {
	for _, transport := range []string{"tcp", "udp"} {
		t.Run(transport, func(t *testing.T) {
			r := newRegistrar(t, Config{Password: "secret", FlowTimer: 25 * time.Second})
			uri := r.URI()
			if transport == "udp" {
				uri = r.UDPURI()
			}
			c := newRegisterer(t, uri, "alice", "secret")

			res := send(t, c, 120)
			if res.StatusCode != 401 {
				t.Fatalf("first REGISTER: %d, want 401", res.StatusCode)
			}
			wa := header(res, "WWW-Authenticate")
			for _, want := range []string{`realm="relink.test"`, `qop="auth"`, "algorithm=MD5", "nonce="} {
				if !strings.Contains(wa, want) {
					t.Errorf("WWW-Authenticate %q lacks %s", wa, want)
				}
			}
			keep(t, c, res)
			res = send(t, c, 120)
			if res.StatusCode != 200 {
				t.Fatalf("authenticated REGISTER: %d, want 200", res.StatusCode)
			}
			if got := contactExpiresOf(t, res); got != 120 {
				t.Errorf("granted expires %d, want 120", got)
			}
			if got := header(res, "Flow-Timer"); got != "25" {
				t.Errorf("Flow-Timer %q, want 25", got)
			}
			b := r.Bindings("sip:alice@relink.test")
			if len(b) != 1 || b[0].Contact != "sip:alice@127.0.0.1:5999" || !strings.EqualFold(b[0].Transport, transport) {
				t.Fatalf("bindings %+v", b)
			}

			// A refresh reuses the nonce with nc=2: one transaction.
			res = send(t, c, 120)
			if res.StatusCode != 200 {
				t.Fatalf("refresh on kept nonce: %d, want 200", res.StatusCode)
			}
			st := r.Stats()
			if st.Registers != 3 || st.ByStatus[401] != 1 || st.ByStatus[200] != 2 || st.NonceReuse != 1 {
				t.Errorf("stats %+v", st)
			}
			a := r.AoR("alice@relink.test")
			if len(a.CallIDs) != 1 || fmt.Sprint(a.CSeqs) != "[1 2 3]" || fmt.Sprint(a.NCs) != "[1 2]" || a.OutOfOrder != 0 {
				t.Errorf("AoR stats %+v", a)
			}
			if fmt.Sprint(a.Statuses) != "[401 200 200]" {
				t.Errorf("statuses %v", a.Statuses)
			}

			// Unregister.
			res = send(t, c, 0)
			if res.StatusCode != 200 || res.Contact() != nil {
				t.Fatalf("unregister: %d contact %v", res.StatusCode, res.Contact())
			}
			if n := r.Stats().Bindings; n != 0 {
				t.Errorf("%d bindings after Expires: 0", n)
			}
		})
	}
}

// sipgo's own DoDigestAuth (nc=1 on a fresh challenge) is accepted.
func TestSipgoDigestAuth(t *testing.T) {
	r := newRegistrar(t, Config{Users: map[string]string{"bob": "pw"}})
	cl := testkit.NewSipgoClient(t)
	c := newRegistererOn(t, cl, r.URI(), "bob", "pw")
	req := c.Request(300)
	res := do(t, c, req)
	if res.StatusCode != 401 {
		t.Fatalf("got %d", res.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := cl.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: "bob", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("DoDigestAuth: %d", res.StatusCode)
	}
}

func TestBadCredentials(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		user   string
		status int
	}{
		{"wrong password 403", Config{Password: "secret"}, "alice", 403},
		{"wrong password 401", Config{Password: "secret", BadCredentialsStatus: 401}, "alice", 401},
		{"unknown user", Config{Users: map[string]string{"bob": "wrong"}}, "alice", 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRegistrar(t, tc.cfg)
			c := newRegisterer(t, r.URI(), tc.user, "wrong")
			res := register(t, c, 60)
			if res.StatusCode != tc.status {
				t.Fatalf("got %d, want %d", res.StatusCode, tc.status)
			}
			if tc.status == 401 && strings.Contains(header(res, "WWW-Authenticate"), "stale") {
				t.Error("a wrong password must not be called stale")
			}
			if n := r.Stats().Bindings; n != 0 {
				t.Errorf("%d bindings", n)
			}
		})
	}
}

func TestStaleNonce(t *testing.T) {
	r := newRegistrar(t, Config{Password: "secret", NonceLifetime: time.Second})
	c := newRegisterer(t, r.URI(), "alice", "secret")
	if res := register(t, c, 60); res.StatusCode != 200 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	time.Sleep(1100 * time.Millisecond)
	res := send(t, c, 60)
	if res.StatusCode != 401 || !strings.Contains(header(res, "WWW-Authenticate"), "stale=true") {
		t.Fatalf("expired nonce: %d %q, want 401 stale=true", res.StatusCode, header(res, "WWW-Authenticate"))
	}
	keep(t, c, res)
	if res := send(t, c, 60); res.StatusCode != 200 {
		t.Fatalf("after stale: %d", res.StatusCode)
	}
	if st := r.Stats(); st.Stale != 1 {
		t.Errorf("stale count %d", st.Stale)
	}
}

func TestNonceCountReplay(t *testing.T) {
	r := newRegistrar(t, Config{Password: "secret"})
	c := newRegisterer(t, r.URI(), "alice", "secret")
	keep(t, c, send(t, c, 60))
	first := c.Request(60) // nc=1
	if res := do(t, c, first); res.StatusCode != 200 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	replay := c.Request(60) // send nc=1 again, with a higher CSeq
	replay.ReplaceHeader(first.GetHeader("Authorization"))
	res := do(t, c, replay)
	if res.StatusCode != 401 || !strings.Contains(header(res, "WWW-Authenticate"), "stale=true") {
		t.Fatalf("replayed nc: %d, want 401 stale=true", res.StatusCode)
	}
}

func TestForgedNonce(t *testing.T) {
	r := newRegistrar(t, Config{Password: "secret"})
	other := newRegistrar(t, Config{Password: "secret"})
	c := newRegisterer(t, other.URI(), "alice", "secret")
	res := send(t, c, 60)
	c = newRegisterer(t, r.URI(), "alice", "secret")
	keep(t, c, res) // a nonce of another registrar
	res = send(t, c, 60)
	if res.StatusCode != 401 || strings.Contains(header(res, "WWW-Authenticate"), "stale") {
		t.Fatalf("foreign nonce: %d %q, want 401 without stale", res.StatusCode, header(res, "WWW-Authenticate"))
	}
}

func TestExpiryRules(t *testing.T) {
	r := newRegistrar(t, Config{MinExpires: 30 * time.Second, MaxExpires: 600 * time.Second, DefaultExpires: 90 * time.Second})
	c := newRegisterer(t, r.URI(), "carol", "")

	res := send(t, c, 10)
	if res.StatusCode != 423 || header(res, "Min-Expires") != "30" {
		t.Fatalf("short expiry: %d Min-Expires %q, want 423 30", res.StatusCode, header(res, "Min-Expires"))
	}
	if n := r.Stats().Bindings; n != 0 {
		t.Fatalf("423 created %d bindings", n)
	}
	if res := send(t, c, -1); contactExpiresOf(t, res) != 90 {
		t.Errorf("default expiry: %d", contactExpiresOf(t, res))
	}
	if res := send(t, c, 3600); contactExpiresOf(t, res) != 600 {
		t.Errorf("capped expiry: %d, want 600", contactExpiresOf(t, res))
	}
	// The Contact's expires parameter wins over the Expires header.
	if res := do(t, c, withContactExpires(c.Request(300), "45")); contactExpiresOf(t, res) != 45 {
		t.Errorf("contact param: %d, want 45", contactExpiresOf(t, res))
	}
	if res := do(t, c, withContactExpires(c.Request(300), "5")); res.StatusCode != 423 {
		t.Errorf("short contact param: %d, want 423", res.StatusCode)
	}
	// A CSeq that does not count up is refused.
	req := c.Request(300)
	req.CSeq().SeqNo -= 2
	if res := do(t, c, req); res.StatusCode != 500 {
		t.Errorf("old CSeq: %d, want 500", res.StatusCode)
	}
	if a := r.AoR("carol@relink.test"); a.OutOfOrder != 1 {
		t.Errorf("out of order %d", a.OutOfOrder)
	}
}

func TestBindingsExpire(t *testing.T) {
	r := newRegistrar(t, Config{MinExpires: -1, SampleInterval: 100 * time.Millisecond})
	c := newRegisterer(t, r.URI(), "dave", "")
	if res := send(t, c, 1); res.StatusCode != 200 || contactExpiresOf(t, res) != 1 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	if n := r.Stats().Bindings; n != 1 {
		t.Fatalf("%d bindings", n)
	}
	deadline := time.Now().Add(3 * time.Second)
	for r.Stats().Bindings != 0 {
		if time.Now().After(deadline) {
			t.Fatal("binding did not expire")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The sampler saw the binding, then saw it gone.
	sawBoth := func() bool {
		var seen bool
		for _, s := range r.Samples() {
			if s.Bindings == 1 {
				seen = true
			}
			if seen && s.Bindings == 0 {
				return true
			}
		}
		return false
	}
	for !sawBoth() {
		if time.Now().After(deadline) {
			t.Fatalf("samples %+v", r.Samples())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestCapacity(t *testing.T) {
	r := newRegistrar(t, Config{Capacity: 20, RetryAfter: 3 * time.Second, SampleInterval: -1})
	c := newRegisterer(t, r.URI(), "erin", "")
	var ok, shed int
	start := time.Now()
	for range 40 {
		res := send(t, c, 60)
		switch res.StatusCode {
		case 200:
			ok++
		case 503:
			shed++
			if ra := header(res, "Retry-After"); ra != "3" {
				t.Fatalf("Retry-After %q, want 3", ra)
			}
		default:
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	// The burst (2) plus what refills meanwhile pass.
	if limit := 2 + int(20*time.Since(start).Seconds()) + 1; shed == 0 || ok < 2 || ok > limit {
		t.Errorf("ok %d (limit %d) shed %d", ok, limit, shed)
	}
	if st := r.Stats(); st.Shed != uint64(shed) || st.ByStatus[503] != uint64(shed) {
		t.Errorf("stats %+v", st)
	}

	r.SetCapacity(0)
	if res := send(t, c, 60); res.StatusCode != 200 {
		t.Errorf("unlimited: %d", res.StatusCode)
	}
}

// A capacity set at run time on an unlimited registrar takes effect.
func TestSetCapacity(t *testing.T) {
	r := newRegistrar(t, Config{})
	c := newRegisterer(t, r.URI(), "erin", "")
	r.SetCapacity(5)
	var shed int
	for range 20 {
		if send(t, c, 60).StatusCode == 503 {
			shed++
		}
	}
	if shed == 0 {
		t.Error("no 503 after SetCapacity(5)")
	}
}

func TestCapacityNoRetryAfter(t *testing.T) {
	r := newRegistrar(t, Config{Capacity: 1, RetryAfter: -1})
	c := newRegisterer(t, r.URI(), "erin", "")
	send(t, c, 60)
	res := send(t, c, 60)
	if res.StatusCode != 503 || res.GetHeader("Retry-After") != nil {
		t.Fatalf("%d Retry-After %q", res.StatusCode, header(res, "Retry-After"))
	}
}

// Over time the admitted rate is the capacity.
func TestCapacityRate(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	const capacity = 50
	r := newRegistrar(t, Config{Capacity: capacity})
	c := newRegisterer(t, r.URI(), "frank", "")
	start := time.Now()
	var ok int
	for time.Since(start) < time.Second {
		if send(t, c, 60).StatusCode == 200 {
			ok++
		}
		time.Sleep(2 * time.Millisecond)
	}
	// ≤ C·t + burst.
	if limit := int(capacity*time.Since(start).Seconds()) + capacity/10 + 1; ok > limit || ok < capacity/2 {
		t.Errorf("%d admitted in %v, limit %d", ok, time.Since(start), limit)
	}
}

// With Window, at most Capacity·Window REGISTERs pass per window: over a
// second of requests every 2 ms (500/s offered), about Capacity pass.
func TestCapacityWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	const capacity = 50
	r := newRegistrar(t, Config{Capacity: capacity, Window: 100 * time.Millisecond})
	c := newRegisterer(t, r.URI(), "frank", "")
	start := time.Now()
	var ok, shed int
	for time.Since(start) < time.Second {
		switch send(t, c, 60).StatusCode {
		case 200:
			ok++
		case 503:
			shed++
		}
		time.Sleep(2 * time.Millisecond)
	}
	// 5 per window; the second may span 11 windows.
	if windows := int(time.Since(start)/(100*time.Millisecond)) + 1; ok > 5*windows || ok < capacity/2 || shed == 0 {
		t.Errorf("%d admitted, %d shed in %v (%d windows of 5)", ok, shed, time.Since(start), windows)
	}
	r.SetCapacity(0)
	if res := send(t, c, 60); res.StatusCode != 200 {
		t.Errorf("unlimited: %d", res.StatusCode)
	}
}

func TestFaults(t *testing.T) {
	r := newRegistrar(t, Config{Password: "secret"})
	c := newRegisterer(t, r.URI(), "gina", "secret")

	r.SetOverload(7 * time.Second)
	res := send(t, c, 60)
	if res.StatusCode != 503 || header(res, "Retry-After") != "7" {
		t.Fatalf("overload: %d %q", res.StatusCode, header(res, "Retry-After"))
	}
	r.ClearOverload()

	for _, f := range []Fault{
		{Code: 403}, {Code: 404}, {Code: 500}, {Code: 603},
		{Code: 302, Contact: "sip:other.example:5060"},
		{Code: 503, Headers: []sipmsg.Header{sipmsg.NewHeader("Retry-After", "18000 (maintenance);duration=3600")}},
	} {
		r.SetFault(f)
		res := send(t, c, 60)
		if res.StatusCode != f.Code {
			t.Errorf("fault %d: got %d", f.Code, res.StatusCode)
		}
		if f.Contact != "" && (res.Contact() == nil || res.Contact().Address.Host != "other.example") {
			t.Errorf("3xx Contact %v", res.Contact())
		}
		if len(f.Headers) > 0 && header(res, "Retry-After") != "18000 (maintenance);duration=3600" {
			t.Errorf("Retry-After %q", header(res, "Retry-After"))
		}
	}
	r.ClearFaults()

	// A per-AoR fault applied twice, then normal processing.
	r.SetAoRFault("sip:gina@relink.test", Fault{Code: 404, Times: 2})
	other := newRegisterer(t, r.URI(), "hank", "secret")
	if res := send(t, other, 60); res.StatusCode != 401 {
		t.Errorf("other AoR: %d, want 401", res.StatusCode)
	}
	for i := range 2 {
		if res := send(t, c, 60); res.StatusCode != 404 {
			t.Errorf("AoR fault %d: %d", i, res.StatusCode)
		}
	}
	if res := register(t, c, 60); res.StatusCode != 200 {
		t.Errorf("after AoR fault: %d", res.StatusCode)
	}
}

// TestCRLFPing checks that sipgo's server answers a CRLF ping with a pong
// (RFC 5626 §3.5.1), that the registrar counts pings, and that silent mode
// swallows them.
func TestCRLFPing(t *testing.T) {
	r := newRegistrar(t, Config{DisableUDP: true})
	if r.UDPURI() != "" {
		t.Error("UDP URI with UDP disabled")
	}
	conn, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ping := func() (string, error) {
		if _, err := conn.Write([]byte("\r\n\r\n")); err != nil {
			return "", err
		}
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		buf := make([]byte, 16)
		n, err := conn.Read(buf)
		return string(buf[:n]), err
	}
	if pong, err := ping(); err != nil || pong != "\r\n" {
		t.Fatalf("pong %q, %v", pong, err)
	}
	r.SetSilent(true)
	if pong, err := ping(); err == nil {
		t.Fatalf("silent registrar answered %q", pong)
	}
	r.SetSilent(false)
	if pong, err := ping(); err != nil || pong != "\r\n" {
		t.Fatalf("pong after silence %q, %v", pong, err)
	}
	// A ping sharing a read with a message still gets its pong (sipgo's
	// server alone would leave it unanswered).
	msg := "OPTIONS sip:r SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-1\r\n" +
		"From: <sip:a@relink.test>;tag=1\r\nTo: <sip:a@relink.test>\r\nCall-ID: ping-1\r\n" +
		"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.Write([]byte("\r\n\r\n" + msg + "\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	for !strings.Contains(string(got), "SIP/2.0 200") || !strings.HasSuffix(string(got), "\r\n\r\n") {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("coalesced pings: read %q: %v", got, err)
		}
		got = append(got, buf[:n]...)
	}
	// Both pings are answered as soon as they are read, before the response.
	if !strings.HasPrefix(string(got), "\r\n\r\nSIP/2.0 200 OK\r\n") {
		t.Errorf("coalesced pings: got %q, want two pongs then 200", got)
	}
	st := r.Stats()
	if st.Pings != 5 || st.Options != 1 || st.Accepted != 1 || st.Connections != 1 {
		t.Errorf("stats %+v", st)
	}
	if n := r.CloseConnections(); n != 1 {
		t.Errorf("closed %d connections", n)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open")
	}
}

func TestSilentDropsRequests(t *testing.T) {
	r := newRegistrar(t, Config{})
	c := newRegisterer(t, r.URI(), "ivy", "")
	r.SetSilent(true)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if res, err := c.Do(ctx, c.Request(60)); err == nil {
		t.Fatalf("silent registrar answered %d", res.StatusCode)
	}
	r.SetSilent(false)
	if res := send(t, c, 60); res.StatusCode != 200 {
		t.Fatalf("after silence: %d", res.StatusCode)
	}
	if st := r.Stats(); st.Dropped != 1 || st.Registers != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestOptionsAndEvents(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	r := newRegistrar(t, Config{OnRequest: func(e Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}})
	cl := testkit.NewSipgoClient(t)
	c := newRegistererOn(t, cl, r.URI(), "jack", "")
	var uri sipmsg.Uri
	if err := sipmsg.ParseUri(r.URI(), &uri); err != nil {
		t.Fatal(err)
	}
	req := sipmsg.NewRequest(sipmsg.OPTIONS, uri)
	req.SetBody(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := cl.Do(ctx, req)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %v %v", res, err)
	}
	send(t, c, 60)
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 || events[0].Method != "OPTIONS" || events[1].Method != "REGISTER" ||
		events[1].Status != 200 || events[1].Expires != 60 || events[1].AoR != "jack@relink.test" {
		t.Errorf("events %+v", events)
	}
}

func TestModifyResponse(t *testing.T) {
	r := newRegistrar(t, Config{ModifyResponse: func(req *sipmsg.Request, res *sipmsg.Response) {
		if res.StatusCode == 200 {
			res.AppendHeader(sipmsg.NewHeader("Expires", "999"))
		}
	}})
	c := newRegisterer(t, r.URI(), "kate", "")
	if res := send(t, c, 60); header(res, "Expires") != "999" || contactExpiresOf(t, res) != 60 {
		t.Errorf("Expires %q", header(res, "Expires"))
	}
}

// Many AoRs on one TCP connection, concurrently: every one ends registered
// with one Call-ID and CSeqs counting up.
func TestManyTrunksOneConnection(t *testing.T) {
	r := newRegistrar(t, Config{Password: "secret"})
	const n = 200
	regs := testkit.Registerers(t, testkit.NewSipgoClient(t), r.URI(), "trunk", "secret", n)
	testkit.RegisterAll(t, regs, 300, n) // 401 + 200 each
	testkit.RegisterAll(t, regs, 300, n) // a refresh on the kept nonce
	if t.Failed() {
		t.FailNow()
	}
	st := r.Stats()
	if st.AoRs != n || st.Bindings != n || st.Accepted != 1 {
		t.Errorf("stats %+v", st)
	}
	for aor, a := range r.AoRs() {
		// first: 401 + 200; refresh: 200 on the kept nonce.
		if len(a.CallIDs) != 1 || a.Requests != 3 || a.OutOfOrder != 0 || fmt.Sprint(a.NCs) != "[1 2]" {
			t.Errorf("%s: %+v", aor, a)
		}
	}
}
