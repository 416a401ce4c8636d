package registrar

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
	"golang.org/x/time/rate"

	"github.com/relinkgo/relink/internal/ratelimit"
)

// Config configures a Registrar. The zero value is a registrar on a free
// loopback port, TCP and UDP, without authentication or capacity limit.
type Config struct {
	// Addr is the host:port to listen on, TCP and UDP on the same port.
	// Zero means "127.0.0.1:0": a free port chosen by the kernel.
	Addr string
	// DisableUDP listens on TCP only.
	DisableUDP bool

	// Realm is the digest realm in challenges. Zero means "relink.test".
	Realm string
	// Users maps usernames to passwords. When it is non-nil, only these
	// users are accepted.
	Users map[string]string
	// Password is accepted for any username when Users is nil. Digest
	// authentication is off when Users is nil and Password is empty.
	Password string
	// ProxyAuth challenges with 407 and Proxy-Authenticate (and reads
	// Proxy-Authorization) instead of 401 and WWW-Authenticate.
	ProxyAuth bool
	// NonceLifetime is how long a nonce is fresh. A valid response on an
	// older nonce gets 401 with stale=true. Zero means 300 s (Kamailio's
	// auth nonce_expire default); negative means nonces never expire.
	NonceLifetime time.Duration
	// BadCredentialsStatus is the answer to a wrong password or an unknown
	// user: 403 (zero means 403) or 401 (a new challenge).
	BadCredentialsStatus int

	// DefaultExpires is granted when the REGISTER asks for no expiry. Zero
	// means 3600 s. SIP expiries are whole seconds; durations are truncated.
	DefaultExpires time.Duration
	// MinExpires: a non-zero expiry below it is answered 423 with
	// Min-Expires. Zero means 60 s; negative disables the check.
	MinExpires time.Duration
	// MaxExpires caps the granted expiry. Zero means 7200 s; negative
	// means no cap.
	MaxExpires time.Duration
	// FlowTimer, when positive, adds "Flow-Timer: N" (RFC 5626, whole
	// seconds) to every 200 OK to a REGISTER. Zero or negative: no header.
	FlowTimer time.Duration

	// Capacity is the number of REGISTERs per second the registrar serves
	// (all of them, with or without credentials). The excess is answered at
	// once with 503 and Retry-After. Zero or negative means unlimited.
	Capacity float64
	// Window, when positive, enforces Capacity as at most Capacity·Window
	// REGISTERs in each fixed window of this length, as the Kamailio
	// configuration of the integration tests does with htable counters
	// (100 ms windows). Zero or negative: a token bucket of depth Burst.
	Window time.Duration
	// Burst is the token bucket's depth. Zero means max(1, Capacity/10).
	// Unused with Window.
	Burst int
	// RetryAfter is the Retry-After of a 503 sent for lack of capacity,
	// rounded up to whole seconds. Zero means 1 s; negative means no
	// Retry-After header.
	RetryAfter time.Duration

	// SampleInterval is the period of load samples (see Samples) and of the
	// sweep of expired bindings and nonces. Zero means 1 s; negative
	// disables sampling (expired bindings are then removed on access).
	SampleInterval time.Duration
	// MaxSamples bounds the samples kept (the oldest are dropped). Zero
	// means 3600.
	MaxSamples int
	// History bounds the per-AoR lists of CSeqs, nonce counts and statuses
	// (the most recent are kept). Zero means 64.
	History int

	// OnRequest, if set, is called for each REGISTER and OPTIONS once its
	// answer is decided, just before the answer is sent (so a client that
	// has the response knows the event was recorded), or when it is
	// dropped in silent mode. It is called concurrently, outside locks,
	// and must not block.
	OnRequest func(Event)
	// ModifyResponse, if set, may edit every response just before it is
	// sent (add headers, change Contact expires...). It is called
	// concurrently and must not block.
	ModifyResponse func(req *sipmsg.Request, res *sipmsg.Response)
	// Logger receives the registrar's and sipgo's logs. Nil discards them.
	Logger *slog.Logger
}

func (c *Config) addr() string {
	if c.Addr == "" {
		return "127.0.0.1:0"
	}
	return c.Addr
}

func (c *Config) realm() string {
	if c.Realm == "" {
		return "relink.test"
	}
	return c.Realm
}

func (c *Config) nonceLifetime() time.Duration {
	switch {
	case c.NonceLifetime == 0:
		return 300 * time.Second
	case c.NonceLifetime < 0:
		return 0 // never expires
	}
	return c.NonceLifetime
}

func (c *Config) badCredentialsStatus() int {
	if c.BadCredentialsStatus == 0 {
		return sipmsg.StatusForbidden
	}
	return c.BadCredentialsStatus
}

func (c *Config) defaultExpires() uint32 {
	if c.DefaultExpires <= 0 {
		return 3600
	}
	return seconds(c.DefaultExpires)
}

func (c *Config) minExpires() uint32 {
	switch {
	case c.MinExpires == 0:
		return 60
	case c.MinExpires < 0:
		return 0
	}
	return seconds(c.MinExpires)
}

func (c *Config) maxExpires() uint32 {
	switch {
	case c.MaxExpires == 0:
		return 7200
	case c.MaxExpires < 0:
		return math.MaxUint32
	}
	return seconds(c.MaxExpires)
}

func (c *Config) retryAfter() int {
	switch {
	case c.RetryAfter == 0:
		return 1
	case c.RetryAfter < 0:
		return -1
	}
	return ceilSeconds(c.RetryAfter)
}

func (c *Config) sampleInterval() time.Duration {
	if c.SampleInterval == 0 {
		return time.Second
	}
	return c.SampleInterval
}

func (c *Config) maxSamples() int {
	if c.MaxSamples <= 0 {
		return 3600
	}
	return c.MaxSamples
}

func (c *Config) history() int {
	if c.History <= 0 {
		return 64
	}
	return c.History
}

func (c *Config) authEnabled() bool { return c.Users != nil || c.Password != "" }

// password returns the password of user and whether the user is known.
func (c *Config) password(user string) (string, bool) {
	if c.Users != nil {
		p, ok := c.Users[user]
		return p, ok
	}
	return c.Password, true
}

func seconds(d time.Duration) uint32 {
	s := d / time.Second
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

func ceilSeconds(d time.Duration) int {
	s := (d + time.Second - 1) / time.Second
	if s > math.MaxInt32 {
		return math.MaxInt32
	}
	return int(s)
}

// admitLocked applies the capacity limit to one REGISTER.
func (r *Registrar) admitLocked(now time.Time) bool {
	if r.cfg.Window > 0 {
		return r.win.Admit(now)
	}
	return r.limiter.AllowN(now, 1)
}

// burstFor is the token bucket depth for a capacity: max(1, c/10).
func burstFor(c float64, override int) int {
	if override > 0 {
		return override
	}
	b := int(c / 10)
	if b < 1 {
		b = 1
	}
	return b
}

// Registrar is an in-process SIP registrar. Its methods are safe for
// concurrent use.
type Registrar struct {
	cfg     Config
	log     *slog.Logger
	ua      *sipgo.UserAgent
	srv     *sipgo.Server
	tcpLn   net.Listener
	udpConn net.PacketConn
	secret  [32]byte
	limiter *rate.Limiter
	win     *ratelimit.Window // with Config.Window; guarded by mu
	silent  atomic.Bool

	serveWG   sync.WaitGroup // listeners and sampler
	handlerWG sync.WaitGroup // handlers in progress
	stop      chan struct{}
	closeOnce sync.Once

	mu        sync.Mutex
	closed    bool
	aors      map[string]*aorState
	nonces    map[string]*nonceState
	fault     *faultState
	aorFaults map[string]*faultState
	conns     map[*trackedConn]struct{}
	byRemote  map[string]*trackedConn
	stats     counters
	cur       Sample // accumulating
	samples   []Sample
	now       func() time.Time // time.Now; replaced in tests
}

// New starts a registrar listening on cfg.Addr.
func New(cfg Config) (*Registrar, error) {
	r := &Registrar{
		cfg:       cfg,
		log:       cfg.Logger,
		stop:      make(chan struct{}),
		aors:      make(map[string]*aorState),
		nonces:    make(map[string]*nonceState),
		aorFaults: make(map[string]*faultState),
		conns:     make(map[*trackedConn]struct{}),
		byRemote:  make(map[string]*trackedConn),
		now:       time.Now,
	}
	if r.log == nil {
		r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if _, err := rand.Read(r.secret[:]); err != nil {
		return nil, fmt.Errorf("registrar: secret: %w", err)
	}
	r.stats.byStatus = make(map[int]uint64)
	r.limiter = rate.NewLimiter(rate.Inf, 1)
	if cfg.Capacity > 0 {
		r.limiter = rate.NewLimiter(rate.Limit(cfg.Capacity), burstFor(cfg.Capacity, cfg.Burst))
	}
	r.win = ratelimit.NewWindow(cfg.Window, cfg.Capacity)

	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("relink-registrar"),
		sipgo.WithUserAgentTransportLayerOptions(
			sipmsg.WithTransportLayerLogger(r.log),
			sipmsg.WithTransportLayerReadFilter(r.readFilter),
		),
		sipgo.WithUserAgentTransactionLayerOptions(sipmsg.WithTransactionLayerLogger(r.log)),
	)
	if err != nil {
		return nil, fmt.Errorf("registrar: user agent: %w", err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(r.log))
	if err != nil {
		ua.Close()
		return nil, fmt.Errorf("registrar: server: %w", err)
	}
	r.ua, r.srv = ua, srv
	srv.OnRegister(r.handleRegister)
	srv.OnOptions(r.handleOptions)
	srv.OnNoRoute(r.handleOther)

	if err := r.listen(); err != nil {
		ua.Close()
		return nil, err
	}
	r.serveWG.Add(1)
	go func() {
		defer r.serveWG.Done()
		_ = srv.ServeTCP(r.tcpLn) // returns when the listener is closed
	}()
	if r.udpConn != nil {
		r.serveWG.Add(1)
		go func() {
			defer r.serveWG.Done()
			_ = srv.ServeUDP(r.udpConn)
		}()
	}
	r.cur.At = r.now()
	if iv := cfg.sampleInterval(); iv > 0 {
		r.serveWG.Add(1)
		go r.sampler(iv)
	}
	return r, nil
}

// listen opens the TCP listener and, unless disabled, a UDP socket on the
// same port (retrying with another free port when the kernel chose one that
// UDP cannot have).
func (r *Registrar) listen() error {
	addr := r.cfg.addr()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("registrar: address %q: %w", addr, err)
	}
	var lc net.ListenConfig
	for attempt := 0; ; attempt++ {
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return fmt.Errorf("registrar: listen tcp: %w", err)
		}
		if r.cfg.DisableUDP {
			r.tcpLn = &trackingListener{Listener: ln, r: r}
			return nil
		}
		p := ln.Addr().(*net.TCPAddr).Port
		pc, err := lc.ListenPacket(context.Background(), "udp", net.JoinHostPort(host, strconv.Itoa(p)))
		if err != nil {
			ln.Close()
			if port == "0" && attempt < 10 {
				continue
			}
			return fmt.Errorf("registrar: listen udp: %w", err)
		}
		r.tcpLn = &trackingListener{Listener: ln, r: r}
		r.udpConn = pc
		return nil
	}
}

// Close stops the registrar: listeners, connections, transactions and its
// goroutines. It waits for handlers in progress. It is idempotent.
func (r *Registrar) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		conns := make([]*trackedConn, 0, len(r.conns))
		for c := range r.conns {
			conns = append(conns, c)
		}
		r.mu.Unlock()
		close(r.stop)
		r.tcpLn.Close()
		if r.udpConn != nil {
			r.udpConn.Close()
		}
		for _, c := range conns {
			c.Close()
		}
		r.handlerWG.Wait()
		r.ua.Close()
		r.serveWG.Wait()
	})
	return nil
}

// Addr is the host:port the registrar listens on (TCP and UDP).
func (r *Registrar) Addr() string { return r.tcpLn.Addr().String() }

// URI is the registrar's SIP URI over TCP: "sip:HOST:PORT;transport=tcp".
func (r *Registrar) URI() string { return "sip:" + r.Addr() + ";transport=tcp" }

// UDPURI is the registrar's SIP URI over UDP, or "" when UDP is disabled.
func (r *Registrar) UDPURI() string {
	if r.udpConn == nil {
		return ""
	}
	return "sip:" + r.udpConn.LocalAddr().String() + ";transport=udp"
}

// Realm is the digest realm of the registrar's challenges.
func (r *Registrar) Realm() string { return r.cfg.realm() }

// SetCapacity changes the capacity (REGISTERs per second) at run time,
// with a burst of max(1, c/10) (or Config.Burst). Zero or negative: unlimited.
func (r *Registrar) SetCapacity(c float64) {
	r.mu.Lock()
	r.win.SetCapacity(c)
	r.mu.Unlock()
	if c <= 0 {
		r.limiter.SetLimit(rate.Inf)
		return
	}
	r.limiter.SetBurst(burstFor(c, r.cfg.Burst))
	r.limiter.SetLimit(rate.Limit(c))
}

// SetSilent makes the registrar stop answering anything, requests and CRLF
// keepalive pings alike, while keeping its connections open (a hung
// server); SetSilent(false) resumes.
func (r *Registrar) SetSilent(on bool) { r.silent.Store(on) }

// CloseConnections closes every TCP connection accepted so far (with a FIN),
// as a restarting server does. It returns how many it closed. Bindings stay.
func (r *Registrar) CloseConnections() int {
	r.mu.Lock()
	conns := make([]*trackedConn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns)
}
