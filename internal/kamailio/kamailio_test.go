package kamailio

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// client is testkit's Registerer for one AoR (one Call-ID, CSeq counting
// up, the digest challenge kept so that refreshes reuse the nonce with nc
// counting up), with helpers that fail the test.
type client struct {
	t testing.TB
	*testkit.Registerer
}

func newClient(t testing.TB, registrarURI, user, pw string) *client {
	t.Helper()
	return newClientOn(t, testkit.NewSipgoClient(t), registrarURI, user, pw)
}

func newClientOn(t testing.TB, c *sipgo.Client, registrarURI, user, pw string) *client {
	t.Helper()
	r, err := testkit.NewRegisterer(testkit.RegisterConfig{Client: c, Registrar: registrarURI, User: user, Password: pw})
	if err != nil {
		t.Fatal(err)
	}
	return &client{t: t, Registerer: r}
}

// send sends the next REGISTER, with credentials on the kept challenge.
func (c *client) send(expires int) *sipmsg.Response {
	c.t.Helper()
	res, err := c.try(expires)
	if err != nil {
		c.t.Fatalf("REGISTER: %v", err)
	}
	return res
}

// try is send that returns its error, for use off the test goroutine.
func (c *client) try(expires int) (*sipmsg.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Do(ctx, c.Request(expires))
}

// tryRegister sends a REGISTER and answers one 401, keeping its challenge.
func (c *client) tryRegister(expires int) (*sipmsg.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Register(ctx, expires)
}

// register sends a REGISTER and answers one 401, keeping its challenge.
func (c *client) register(expires int) *sipmsg.Response {
	c.t.Helper()
	res, err := c.tryRegister(expires)
	if err != nil {
		c.t.Fatalf("REGISTER: %v", err)
	}
	return res
}

func (c *client) keep(res *sipmsg.Response) {
	c.t.Helper()
	if err := c.Keep(res); err != nil {
		c.t.Fatal(err)
	}
}

func header(res *sipmsg.Response, name string) string {
	if h := res.GetHeader(name); h != nil {
		return h.Value()
	}
	return ""
}

func stats(t testing.TB, k *Instance) Stats {
	t.Helper()
	s, err := k.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRegistrar registers over TCP with digest auth, refreshes on the kept
// nonce, then exercises the overload switch, the rate limit, 423 and 403.
func TestRegistrar(t *testing.T) {
	k := Start(t, Options{})
	c := newClient(t, k.URI(), "alice", k.Password())

	res := c.send(300)
	if res.StatusCode != 401 || !strings.Contains(header(res, "WWW-Authenticate"), `qop="auth"`) {
		t.Fatalf("first REGISTER: %d %q, want 401 with qop=auth", res.StatusCode, header(res, "WWW-Authenticate"))
	}
	c.keep(res)
	if res = c.send(300); res.StatusCode != 200 {
		t.Fatalf("authenticated REGISTER: %d", res.StatusCode)
	}
	if ct := res.Contact(); ct == nil || ct.Params.GetOr("expires", "") != "300" {
		t.Errorf("200 Contact %v, want expires=300", res.Contact())
	}
	cs, err := k.Contacts("alice")
	must(t, err)
	if len(cs) != 1 || !strings.Contains(cs[0].URI, "alice@127.0.0.1:5999") || cs[0].CallID != c.CallID() || cs[0].CSeq != 2 {
		t.Fatalf("contacts %+v", cs)
	}
	// A refresh on the kept nonce (nc=2) is one transaction.
	if res = c.send(300); res.StatusCode != 200 {
		t.Fatalf("refresh on kept nonce: %d", res.StatusCode)
	}
	st := stats(t, k)
	if st.Registers != 3 || st.Challenges != 1 || st.Saved != 2 || st.Contacts != 1 || st.Users != 1 {
		t.Errorf("stats %+v", st)
	}

	// Overload switch.
	must(t, k.SetOverload(5*time.Second))
	if res = c.send(300); res.StatusCode != 503 || header(res, "Retry-After") != "5" {
		t.Fatalf("overload: %d Retry-After %q", res.StatusCode, header(res, "Retry-After"))
	}
	must(t, k.ClearOverload())
	if res = c.send(300); res.StatusCode != 200 {
		t.Fatalf("after overload: %d", res.StatusCode)
	}

	// Rate limit: 10/s admits about one per 100 ms window.
	must(t, k.SetRate(10))
	var ok, shed int
	start := time.Now()
	for range 30 {
		switch res = c.send(300); res.StatusCode {
		case 200:
			ok++
		case 503:
			shed++
			if header(res, "Retry-After") != "1" {
				t.Errorf("shed Retry-After %q", header(res, "Retry-After"))
			}
		default:
			t.Fatalf("rate-limited REGISTER: %d", res.StatusCode)
		}
	}
	elapsed := time.Since(start)
	if limit := int(elapsed.Seconds()*10) + 2; shed == 0 || ok > limit {
		t.Errorf("rate 10/s: %d ok, %d shed in %v", ok, shed, elapsed)
	}
	must(t, k.SetRate(0))
	st = stats(t, k)
	if st.Overload != 1 || st.Shed != shed || st.Rejected() != shed+1 {
		t.Errorf("stats %+v, shed %d", st, shed)
	}

	// 423 with Min-Expires, also after a change at run time.
	if res = c.send(10); res.StatusCode != 423 || header(res, "Min-Expires") != "60" {
		t.Errorf("short expiry: %d Min-Expires %q", res.StatusCode, header(res, "Min-Expires"))
	}
	must(t, k.SetMinExpires(120*time.Second))
	if res = c.send(90); res.StatusCode != 423 || header(res, "Min-Expires") != "120" {
		t.Errorf("after SetMinExpires: %d Min-Expires %q", res.StatusCode, header(res, "Min-Expires"))
	}

	// Wrong password.
	bad := newClient(t, k.URI(), "mallory", "wrong")
	if res = bad.register(300); res.StatusCode != 403 {
		t.Errorf("wrong password: %d, want 403", res.StatusCode)
	}

	// Unregister.
	if res = c.send(0); res.StatusCode != 200 {
		t.Fatalf("unregister: %d", res.StatusCode)
	}
	cs, err = k.Contacts("alice")
	must(t, err)
	if len(cs) != 0 {
		t.Errorf("contacts after unregister: %+v", cs)
	}
}

// An expired nonce gets 401 with stale=true.
func TestStaleNonce(t *testing.T) {
	k := Start(t, Options{NonceExpire: time.Second})
	c := newClient(t, k.UDPURI(), "bob", k.Password())
	if res := c.register(300); res.StatusCode != 200 {
		t.Fatalf("register over UDP: %d", res.StatusCode)
	}
	time.Sleep(2100 * time.Millisecond)
	res := c.send(300)
	if res.StatusCode != 401 || !strings.Contains(strings.ToLower(header(res, "WWW-Authenticate")), "stale=true") {
		t.Fatalf("expired nonce: %d %q", res.StatusCode, header(res, "WWW-Authenticate"))
	}
	c.keep(res)
	if res = c.send(300); res.StatusCode != 200 {
		t.Fatalf("after stale: %d", res.StatusCode)
	}
	if st := stats(t, k); st.Stale != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Kamailio answers an RFC 5626 CRLF ping with a pong (tcp_crlf_ping).
func TestCRLFPing(t *testing.T) {
	k := Start(t, Options{})
	conn, err := net.Dial("tcp", k.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for range 2 {
		if _, err := conn.Write([]byte("\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 8)
		n, err := conn.Read(buf)
		if err != nil || string(buf[:n]) != "\r\n" {
			t.Fatalf("pong %q, %v", buf[:n], err)
		}
	}
}

func TestLaunchStop(t *testing.T) {
	Require(t)
	start := time.Now()
	k, err := Launch(context.Background(), Options{Rate: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ready in %v", time.Since(start))
	dir := k.dir
	out, err := k.Kamcmd("htable.get", "sw", "rate")
	if err != nil || !strings.Contains(out, "value: "+strconv.Itoa(rateSwitch(100))) {
		t.Errorf("initial rate switch: %q %v", out, err)
	}
	if _, err := k.Kamcmd("no.such.command"); err == nil {
		t.Error("an RPC error was not reported")
	}
	start = time.Now()
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	select {
	case <-k.Done():
	default:
		t.Fatal("process still running after Stop")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory left behind: %v", err)
	}
	if err := k.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestRateSwitch(t *testing.T) {
	for _, tc := range []struct {
		c           float64
		win, limit  int
		maxPerSecNs float64
	}{
		{0, 0, 0, 0},
		{-5, 0, 0, 0},
		{200, 100, 20, 200},
		{2000, 100, 200, 2000},
		{15, 134, 2, 15},
		{1, 1000, 1, 1},
		{0.5, 2000, 1, 0.5},
	} {
		v := rateSwitch(tc.c)
		win, limit := v/100000, v%100000
		if win != tc.win || limit != tc.limit {
			t.Errorf("rate %v: window %d ms × %d, want %d × %d", tc.c, win, limit, tc.win, tc.limit)
		}
		if win > 0 {
			if got := float64(limit) * 1000 / float64(win); got > tc.c+1e-9 {
				t.Errorf("rate %v admits %v/s", tc.c, got)
			}
			if limit > max(1, int(tc.c/10+0.5)) {
				t.Errorf("rate %v: burst %d above c/10", tc.c, limit)
			}
		}
	}
}

// Kamailio runs inside a network namespace (root only): it answers there,
// kamcmd still reaches it, and the host's loopback does not.
func TestNetns(t *testing.T) {
	Require(t)
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("no ip command")
	}
	ns := fmt.Sprintf("relink-kam-%d", os.Getpid())
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(ip, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("netns", "add", ns)
	t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
	run("netns", "exec", ns, "ip", "link", "set", "lo", "up")

	k := Start(t, Options{Netns: ns})
	if _, err := k.Stats(); err != nil {
		t.Fatalf("kamcmd into the namespace: %v", err)
	}
	// A CRLF ping from inside the namespace gets its pong.
	_, port, _ := net.SplitHostPort(k.Addr())
	script := `exec 3<>/dev/tcp/127.0.0.1/` + port + `; printf '\r\n\r\n' >&3; timeout 2 head -c 2 <&3 | od -An -c`
	if out := run("netns", "exec", ns, "bash", "-c", script); !strings.Contains(out, `\r  \n`) {
		t.Errorf("pong inside the namespace: %q", out)
	}
	if c, err := net.DialTimeout("tcp", k.Addr(), time.Second); err == nil {
		c.Close()
		t.Error("Kamailio in a namespace is reachable on the host's loopback")
	}
}

// Over time the rate limit admits C per second, all REGISTERs counted.
func TestRateOverTime(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	const capacity = 100
	k := Start(t, Options{Rate: capacity, RetryAfter: -1})
	cl := testkit.NewSipgoClient(t)
	var admitted, shed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(1500 * time.Millisecond)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClientOn(t, cl, k.URI(), fmt.Sprintf("load%d", g), "x")
			for time.Now().Before(stop) {
				res, err := c.try(300) // no credentials: 401 when admitted
				if err != nil {
					t.Errorf("REGISTER: %v", err)
					return
				}
				switch res.StatusCode {
				case 401:
					admitted.Add(1)
				case 503:
					shed.Add(1)
					if res.GetHeader("Retry-After") != nil {
						t.Error("Retry-After with RetryAfter < 0")
						return
					}
				default:
					t.Errorf("status %d", res.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	a := float64(admitted.Load())
	if a > capacity*secs+capacity/10 || a < 0.8*capacity*secs {
		t.Errorf("%v admitted in %.2fs at capacity %d/s (%d shed)", a, secs, capacity, shed.Load())
	}
	st := stats(t, k)
	if st.Shed != int(shed.Load()) || st.Registers != int(admitted.Load()+shed.Load()) {
		t.Errorf("stats %+v, admitted %d shed %d", st, admitted.Load(), shed.Load())
	}
	t.Logf("%.0f admitted/s, %.0f shed/s", a/secs, float64(shed.Load())/secs)
}

// BenchmarkRegister measures Kamailio's REGISTER transactions per second
// for 2,000 trunks sharing one TCP connection, each refreshing with digest
// credentials on its kept nonce, 64 in flight.
func BenchmarkRegister(b *testing.B) {
	k := Start(b, Options{})
	const trunks = 2000
	regs := testkit.Registerers(b, testkit.NewSipgoClient(b), k.URI(), "trunk", k.Password(), trunks)
	testkit.RegisterAll(b, regs, 3600, 64)
	if st, err := k.Stats(); err != nil || st.Contacts != trunks {
		b.Fatalf("after initial registration: %+v %v", st, err)
	}
	testkit.RefreshParallel(b, regs, 3600)
}

// Launch outside a test, as a benchmark program does.
func ExampleLaunch() {
	k, err := Launch(context.Background(), Options{Rate: 200, MinExpires: -1})
	if err != nil {
		fmt.Println(err) // ErrNotInstalled without the Debian package
		return
	}
	defer k.Stop()
	fmt.Println(k.URI())
	_ = k.SetOverload(5 * time.Second)
	st, _ := k.Stats()
	fmt.Println(st.Overload)
}

// Every REGISTER gets exactly one final response: no stray second reply
// (the stock `if (!save()) sl_reply_error();` sends a 500 after save's 423).
func TestOneReplyPerRequest(t *testing.T) {
	k := Start(t, Options{})
	var stray atomic.Int32
	cl := testkit.NewSipgoClient(t, sipgo.WithUserAgentTransactionLayerOptions(
		sipmsg.WithTransactionLayerUnhandledResponseHandler(func(*sipmsg.Response) { stray.Add(1) })))
	c := newClientOn(t, cl, k.URI(), "carol", k.Password())
	want := []int{200, 423, 200}
	for i, exp := range []int{300, 10, 0} {
		if res, err := c.tryRegister(exp); err != nil || res.StatusCode != want[i] {
			t.Fatalf("expires %d: %v %v, want %d", exp, res, err, want[i])
		}
	}
	must(t, k.SetOverload(time.Second))
	if res := c.send(300); res.StatusCode != 503 {
		t.Fatalf("overload: %d", res.StatusCode)
	}
	must(t, k.ClearOverload())
	bad := newClientOn(t, cl, k.URI(), "mallory", "wrong")
	if res, err := bad.tryRegister(300); err != nil || res.StatusCode != 403 {
		t.Fatalf("wrong password: %v %v", res, err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := stray.Load(); n != 0 {
		t.Errorf("%d stray responses", n)
	}
}
