package conn

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/statebox"
)

// Defaults of LinkConfig.
const (
	// DefaultHealthyAfter is how long a session must live for the Link to
	// consider the connection healthy and reset its backoff.
	DefaultHealthyAfter = 30 * time.Second
	// DefaultDialTimeout bounds one dial when LinkConfig.DialTimeout is
	// zero. It is grpc-go's minimum connect timeout: Linux's own bound on an
	// unanswered SYN is about 127 s (tcp_syn_retries = 6).
	DefaultDialTimeout = 20 * time.Second
	// DefaultHandshakeTimeout bounds a connection's TLS handshake and
	// LinkConfig.Handshake together when LinkConfig.HandshakeTimeout is zero.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultSlowRetry is the least wait after a configuration error
	// (ErrTLSHandshake) when LinkConfig.SlowRetry is zero.
	DefaultSlowRetry = time.Minute
)

// Errors returned by NewLink and Run.
var (
	// ErrInvalidLinkConfig is wrapped by every error NewLink returns.
	ErrInvalidLinkConfig = errors.New("conn: invalid LinkConfig")
	// ErrLinkRunning is returned by Run while another call to Run on the
	// same Link has not returned.
	ErrLinkRunning = errors.New("conn: link already running")
	// ErrLinkGaveUp is wrapped, together with the last failure, by the error
	// Run returns when LinkConfig.MaxAttempts was reached or the backoff
	// policy returned backoff.Stop.
	ErrLinkGaveUp = errors.New("conn: link gave up")
)

// LinkConfig configures a Link. Session and Addrs are required; the zero
// value of every other field is the documented default.
type LinkConfig struct {
	// Dialer dials each connection and sets up its liveness monitoring; nil
	// means a zero Dialer (the documented defaults of Config). Tests plug
	// pipes or fault proxies in through Dialer.Dial.
	Dialer *Dialer
	// Addrs are the addresses to connect to, tried in order. Required, and
	// no element may be empty; with a TCP network each must be host:port.
	// A failed dial, or a session that ends before HealthyAfter, moves on to
	// the next address (wrapping around); a healthy connection that is lost
	// is first replaced at the same address.
	Addrs []string
	// Network is passed to the Dialer: "tcp" (the default when empty),
	// "tcp4", "tcp6" or "unix"; any value when Dialer.Dial is set.
	Network string
	// TLSConfig, if set, makes each connection TLS over the watched TCP
	// socket: after the dial, the Link runs a TLS client handshake (bounded
	// by HandshakeTimeout, with ServerName taken from the address when
	// empty), then Handshake and Session use the TLS connection. Kernel
	// options and probes are as for TCP; probes are written through TLS.
	// nil (the default) means plain connections. Set it here or in
	// Dialer.TLSConfig, not both (NewLink refuses that).
	//
	// A handshake that fails because of TLS itself (ErrTLSHandshake: an
	// untrusted or mismatched certificate, a server that refused ours, a
	// port that does not speak TLS) is a configuration error, not an
	// outage: the Gate hears ClientFailure (the server answered; nobody
	// else slows down), and the Link retries no sooner than SlowRetry, so
	// that fixing the certificate or the address needs no restart while a
	// wrong one costs the server one handshake a minute. MaxAttempts stops
	// it. A handshake cut by the network (a timeout, a reset, the peer
	// closing) counts as the connection dying before readiness (see
	// Handshake).
	TLSConfig *tls.Config
	// HandshakeTimeout bounds the TLS handshake and Handshake together,
	// from the end of the dial. Zero means DefaultHandshakeTimeout (10 s);
	// negative turns it off: no bound besides Run's ctx (and the Conn's
	// liveness). When it expires the connection is closed and the attempt
	// fails with ErrHandshakeTimeout, which the Gate hears as Unreachable
	// (the server did not answer in time).
	HandshakeTimeout time.Duration
	// Handshake, if set, is the protocol's login or greeting, run on each
	// new connection before Session (after the TLS handshake), in Run's
	// goroutine, with a ctx bounded by HandshakeTimeout. The Conn is
	// probed meanwhile. The Link is LinkReady only once it returns nil, and
	// that is the Gate's Success: the Gate's permit is held across the
	// dial, the TLS handshake and Handshake, and reported once. Its error
	// decides the outcome:
	//
	//   - one made by backoff.Overloaded(err, d): the server's push-back.
	//     The Gate hears Overload(d): it pauses for d when d > 0 and cuts
	//     its pace either way; without a Gate the Link waits at least d;
	//   - one marked by backoff.Permanent: the Link stops and Run returns
	//     it;
	//   - any error while the connection died (Conn.Done closed: the server
	//     closed it, reset it or stopped answering) or HandshakeTimeout
	//     expired: the Gate hears Unreachable, which counts against the pace
	//     when other attempts got through (and closes the Gate when none
	//     did);
	//   - any other error: a failure of this client (ClientFailure for the
	//     Gate, which brings no success, so the pace does not grow from it),
	//     followed by the Link's own backoff delay.
	//
	// Every failure counts for MaxAttempts and the backoff. Handshake must
	// return promptly once ctx is done; the Link closes the Conn then. Nil
	// means ready when the connection (and the TLS handshake) is up.
	Handshake func(ctx context.Context, c *Conn) error
	// Session is run on each new connection, in its own goroutine, once the
	// Link is ready (after Handshake): the user's serve loop (and its
	// handshake, when Handshake is nil). Required.
	//
	// Its ctx is cancelled when Run's ctx ends (with the same cause) or when
	// the connection is declared dead (with the Conn's Err as the cause,
	// for example ErrUnresponsive); the Link also closes the Conn then.
	// The peer's EOF (it closed or half-closed its side) is not a death:
	// the Session reads io.EOF and may still write its reply; the Link
	// waits up to 10 s for it to return, then cancels it (cause io.EOF).
	// Session must return promptly once ctx is done or the Conn is closed:
	// the Link waits for it before it redials or before Run returns, so two
	// sessions of one Link never overlap. Whatever Session returns, the Link
	// closes the Conn and reconnects; the error (or the Conn's Err, if it
	// died first) is reported in the LinkStateChange to
	// LinkTransientFailure. An error marked by backoff.Permanent (for which
	// backoff.IsPermanent reports true) stops the Link instead: Run returns
	// it as Session returned it and the Link goes to LinkShutdown. One made
	// by backoff.Overloaded(err, d) is the server's push-back: the Gate
	// hears Overload(d) (Gate.Observe) before the Link redials through it.
	// A connection of a ready Link declared dead by liveness
	// (ErrUnresponsive) is reported to the Gate as
	// backoff.UnreachableSince(its last inbound byte), as sip does for a
	// lost flow. A panic in Session is not recovered.
	Session func(ctx context.Context, c *Conn) error
	// Backoff makes the delay policy of each Run; nil means
	// backoff.NewFactory(backoff.Exponential{}): full jitter, delays drawn
	// from [0, min(60 s, 500 ms·2^n)], never giving up. The policy is asked
	// for a delay after each failed attempt and after each session that
	// ended before HealthyAfter; it is Reset after a healthy session. A
	// delay of backoff.Stop makes Run give up (see ErrLinkGaveUp).
	Backoff backoff.Factory
	// Gate, if set, admits every dial, redials included: the Link calls
	// Gate.Acquire after the backoff delay, holds the permit across the
	// dial, the TLS handshake and Handshake, and reports the attempt's
	// outcome through Permit.Done — Success when the Link became ready;
	// Overload(d) for a Handshake's backoff.Overloaded(err, d); Unreachable
	// when the dial timed out or was refused, reset or found no route, or
	// the connection died (or HandshakeTimeout expired) before readiness;
	// ClientFailure for other errors (an unknown host, a bad address, a
	// certificate refused, another Handshake error). After readiness it
	// reports what the connection's end says with Gate.Observe (see
	// Session). Share one Gate among all the Links (and trunks) that
	// recover towards the same server. Nil means no gate. Closing the Gate
	// (Gate.Close) stops the Link: Run returns backoff.ErrClosed.
	Gate *backoff.Gate
	// HealthyAfter is how long a session must have lived for its
	// connection to count as healthy. When a healthy connection is lost,
	// the backoff policy is Reset and the first replacement is dialed at
	// once (RFC 5626 §4.5, "the first replacement flow at once"), still
	// through the Gate. Zero means DefaultHealthyAfter (30 s). Negative
	// turns the minimum lifetime off: every connection that was established
	// counts as healthy however short its session, so the backoff only
	// paces failed dials (and a server that accepts and closes at once is
	// redialed without delay, paced by the Gate alone). The other reading of
	// "off", a backoff that sessions never reset, would make a Link with
	// MaxAttempts give up after that many healthy connections.
	HealthyAfter time.Duration
	// DialTimeout bounds each dial (the Gate's wait is not included). Zero
	// means DefaultDialTimeout (20 s); negative turns it off: no bound
	// besides the Dialer's own and Run's ctx.
	DialTimeout time.Duration
	// SlowRetry is the least wait before retrying after a configuration
	// error (ErrTLSHandshake): zero means DefaultSlowRetry (1 min);
	// negative turns the floor off (the backoff delay alone).
	SlowRetry time.Duration
	// MaxAttempts, when positive, makes Run give up after this many
	// consecutive failures — failed dials and sessions that ended before
	// HealthyAfter — and return an error wrapping ErrLinkGaveUp and the
	// last failure. Zero means the default, never give up; negative turns
	// the limit off, which is the same.
	MaxAttempts int
	// OnStateChange, if set, is called after each change of state, in
	// order, from Run's goroutine and outside the Link's lock. It must not
	// block: the Link does not move on until it returns. Nil means no
	// callback.
	OnStateChange func(LinkStateChange)
	// Logger receives state changes at Info and attempts at Debug; nil
	// discards them.
	Logger *slog.Logger
	// MeterProvider provides the Link's instruments; nil means the global
	// provider (a no-op unless the application set one).
	MeterProvider metric.MeterProvider
	// TracerProvider provides the tracer of the span each attempt records;
	// nil means the global provider.
	TracerProvider trace.TracerProvider
}

// Link is a supervised logical connection: Run keeps one connection to
// Addrs up, running the Session on each connection, and replaces the
// connection when it dies — after the backoff delay and through the Gate —
// until its context ends or the Session (or the dial) returns an error
// marked by backoff.Permanent. A connection dies when the Session returns
// or when the Conn declares its peer gone (Conn.Done), whichever comes
// first.
//
// States follow grpc-go's vocabulary: LinkIdle until Run, then
// LinkConnecting (the Gate's wait, the dial, the TLS handshake and
// Handshake), LinkReady (Handshake returned nil; the Session runs), LinkTransientFailure (waiting to try again), and LinkShutdown when
// Run returns. State, WaitForStateChange and LinkConfig.OnStateChange
// observe them.
//
// Telemetry (no-op unless providers are given or the globals are set):
//   - relink.link.connections, an UpDownCounter in {connection}: running
//     links by relink.link.state (connecting, ready, transient-failure) and
//     network.transport; a Link counts from Run's start to its return;
//   - relink.link.attempts, a Counter in {attempt}: attempts (dial to
//     readiness), first ones and reconnects, by server.address,
//     network.transport and relink.outcome (success, unreachable,
//     client_failure, overload, canceled);
//   - one span per attempt, relink.link.connect (the Gate's wait, marked by
//     a "gate admitted" event, then the dial, whose conn.Dial span is its
//     child, the TLS handshake and Handshake), with server.address,
//     relink.link.attempt and, on failure, error.type.
//
// The methods of a Link are safe for concurrent use.
type Link struct {
	cfg              LinkConfig // Addrs copied
	dialer           *Dialer
	network          string
	newBackoff       backoff.Factory
	healthyAfter     time.Duration // < 0: off, every session is healthy
	dialTimeout      time.Duration // < 0: off
	handshakeTimeout time.Duration // < 0: off
	slowRetry        time.Duration // < 0: off
	tlsConfig        *tls.Config   // LinkConfig's or the Dialer's; nil: plain
	log              *slog.Logger
	inst             *linkInstruments
	lastOutcome      attemptOutcome // of the last dial; only Run's goroutine uses it

	state statebox.Box[LinkState]

	mu      sync.Mutex
	running bool
}

// NewLink validates cfg and returns a Link in state LinkIdle. The returned
// errors wrap ErrInvalidLinkConfig.
func NewLink(cfg LinkConfig) (*Link, error) {
	network, err := validate(&cfg)
	if err != nil {
		return nil, err
	}
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	l := &Link{
		cfg:          cfg,
		dialer:       cfg.Dialer,
		network:      network,
		newBackoff:   cfg.Backoff,
		healthyAfter: cfg.HealthyAfter,
		dialTimeout:  cfg.DialTimeout,
		log:          cfg.Logger,
	}
	if l.dialer == nil {
		l.dialer = &Dialer{}
	}
	if l.newBackoff == nil {
		l.newBackoff = backoff.NewFactory(backoff.Exponential{})
	}
	if l.healthyAfter == 0 {
		l.healthyAfter = DefaultHealthyAfter
	}
	if l.dialTimeout == 0 {
		l.dialTimeout = DefaultDialTimeout
	}
	l.handshakeTimeout = cmp.Or(cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	l.slowRetry = cmp.Or(cfg.SlowRetry, DefaultSlowRetry)
	l.tlsConfig = cmp.Or(cfg.TLSConfig, l.dialer.TLSConfig)
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.inst = newLinkInstruments(cfg.MeterProvider, cfg.TracerProvider, network, cfg.Addrs)
	return l, nil
}

// validate checks cfg and returns its network, "tcp" when empty, or an
// error wrapping ErrInvalidLinkConfig.
func validate(cfg *LinkConfig) (string, error) {
	invalid := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: "+format, append([]any{ErrInvalidLinkConfig}, args...)...)
	}
	if cfg.Session == nil {
		return invalid("Session is nil")
	}
	if len(cfg.Addrs) == 0 {
		return invalid("Addrs is empty")
	}
	if cfg.TLSConfig != nil && cfg.Dialer != nil && cfg.Dialer.TLSConfig != nil {
		return invalid("TLSConfig and Dialer.TLSConfig are both set")
	}
	network := cfg.Network
	if network == "" {
		network = "tcp"
	}
	custom := cfg.Dialer != nil && cfg.Dialer.Dial != nil
	switch network {
	case "tcp", "tcp4", "tcp6", "unix":
	default:
		if !custom {
			return invalid("unsupported Network %q (want tcp, tcp4, tcp6 or unix)", network)
		}
	}
	for i, a := range cfg.Addrs {
		if a == "" {
			return invalid("Addrs[%d] is empty", i)
		}
		if isTCP(network) {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return invalid("Addrs[%d] %q: %w", i, a, err)
			}
		}
	}
	return network, nil
}

// State returns the Link's current state.
func (l *Link) State() LinkState { return l.state.Get() }

// WaitForStateChange waits until the Link's state differs from from, and
// reports true; it returns false if ctx ends first. It returns at once when
// the state already differs, so a caller that loops on
//
//	for s := l.State(); ; {
//		if !l.WaitForStateChange(ctx, s) { break }
//		s = l.State()
//	}
//
// never misses the latest state (it may skip states that were left before
// it looked; OnStateChange sees every change).
func (l *Link) WaitForStateChange(ctx context.Context, from LinkState) bool {
	return l.state.Wait(ctx, from)
}

// setState changes the state, wakes the waiters, records the metric and
// calls OnStateChange. ctx is Run's, for the log and the metric (it may
// have ended: Shutdown is recorded all the same). Only Run's goroutine calls it, so events are ordered.
func (l *Link) setState(ctx context.Context, to LinkState, err error, addr string) {
	from, changed := l.state.Set(to, func(from, to LinkState) { l.inst.stateChanged(ctx, from, to) })
	if !changed {
		return
	}
	at := time.Now()
	if l.log.Enabled(ctx, slog.LevelInfo) {
		attrs := []slog.Attr{slog.String("from", from.String()), slog.String("to", to.String())}
		if addr != "" {
			attrs = append(attrs, slog.String("server.address", addr))
		}
		if err != nil {
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		l.log.LogAttrs(ctx, slog.LevelInfo, "link state", attrs...)
	}
	if l.cfg.OnStateChange != nil {
		l.cfg.OnStateChange(LinkStateChange{Destination: addr, From: from, To: to, Err: err, At: at})
	}
}

// Run keeps the link up until ctx ends: it dials Addrs (through the Gate),
// runs the Session on each connection, and when the connection dies waits
// (the backoff delay, then the Gate) and redials. The first dial, and the
// first redial after a healthy connection, are made without a backoff delay.
//
// When ctx ends, Run cancels the Session's context, closes the connection,
// waits for the Session to return and returns context.Cause(ctx). When the
// Session or the Dialer returns an error marked by backoff.Permanent, Run
// returns that error as it was returned — still marked, so that
// backoff.IsPermanent holds for it and errors.Is finds the error inside —
// without trying again; so it does with backoff.ErrClosed once the Gate
// has been closed. It returns an error wrapping ErrLinkGaveUp only
// when told to give up (MaxAttempts, or a policy that returns backoff.Stop),
// and ErrLinkRunning at once if another Run on the same Link has not
// returned. The Link is in LinkShutdown when Run returns (except for
// ErrLinkRunning); Run may be called again, and the Link then starts over.
func (l *Link) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.running {
		l.mu.Unlock()
		return ErrLinkRunning
	}
	l.running = true
	l.mu.Unlock()

	r := &runner{l: l, bo: l.newBackoff(), immediate: true}
	r.bo.Reset()
	err := r.loop(ctx)

	l.setState(ctx, LinkShutdown, err, r.addr)
	l.mu.Lock()
	l.running = false
	l.mu.Unlock()
	return err
}

// runner is the bookkeeping of one Run: where to dial next, how many
// failures in a row, and whether the next attempt waits for the backoff.
type runner struct {
	l         *Link
	bo        backoff.BackOff
	idx       int           // index in Addrs of the next attempt
	failures  int           // consecutive attempts without a healthy session
	immediate bool          // no backoff delay before the next attempt
	lastErr   error         // the last failure, for ErrLinkGaveUp's chain
	addr      string        // the address of the last attempt
	attempt   int           // attempts made
	minWait   time.Duration // the least backoff delay before the next attempt
}

// loop is Run's body: it returns Run's error.
func (r *runner) loop(ctx context.Context) error {
	for {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		if !r.immediate {
			d := r.bo.NextBackOff()
			if d == backoff.Stop {
				return r.gaveUp(ctx)
			}
			d = max(d, r.minWait)
			if !ctxtime.Sleep(ctx, d) {
				return context.Cause(ctx)
			}
		}
		if stop, err := r.once(ctx); stop {
			return err
		}
	}
}

// once makes one attempt and, when it connects, serves the connection until
// it ends. It reports whether Run must stop, and with which error.
func (r *runner) once(ctx context.Context) (stop bool, err error) {
	l := r.l
	r.immediate = false
	r.minWait = 0
	r.addr = l.cfg.Addrs[r.idx]
	r.attempt++
	l.setState(ctx, LinkConnecting, nil, r.addr)
	c, err := l.dial(ctx, r.idx, r.attempt)
	if err != nil {
		return r.dialFailed(ctx, err)
	}
	l.setState(ctx, LinkReady, nil, r.addr)
	start := time.Now()
	err = l.serve(ctx, c)
	if ctx.Err() == nil {
		l.observeEnd(c, err)
	}
	return r.ended(ctx, err, time.Since(start))
}

// dialFailed handles a failed dial; see once.
func (r *runner) dialFailed(ctx context.Context, err error) (bool, error) {
	l := r.l
	if final := final(ctx, err); final != nil {
		return true, final
	}
	l.setState(ctx, LinkTransientFailure, err, r.addr)
	if r.failed(err) {
		return true, r.gaveUp(ctx)
	}
	// The destination is unreachable or overloaded: with a Gate, that is
	// the gate's business (it closes and scouts, so the path's return is
	// noticed within ScoutMax; it pauses for a Retry-After and paces);
	// a private backoff on top would only delay this link's recovery.
	r.immediate = l.cfg.Gate != nil &&
		(l.lastOutcome == outcomeUnreachable || l.lastOutcome == outcomeOverload)
	r.floor(err)
	return false, nil
}

// floor sets the least delay before the next attempt after err: SlowRetry
// after a configuration error, the server's Retry-After when no Gate hears
// it.
func (r *runner) floor(err error) {
	l := r.l
	if errors.Is(err, ErrTLSHandshake) && l.slowRetry > 0 {
		r.immediate = false
		r.minWait = l.slowRetry
	}
	if d, ok := backoff.RetryAfter(err); ok && l.cfg.Gate == nil {
		r.minWait = max(r.minWait, d)
	}
}

// observeEnd tells the Gate what the end of a ready connection says about
// the server: a Session's backoff.Overloaded is its push-back
// (Overload(d)); a death declared by liveness (ErrUnresponsive) makes the
// server unreachable since the connection's last inbound byte.
func (l *Link) observeEnd(c *Conn, err error) {
	g := l.cfg.Gate
	if g == nil || err == nil {
		return
	}
	if o, ok := backoff.OverloadOutcome(err); ok {
		g.Observe(o)
		return
	}
	if errors.Is(err, ErrUnresponsive) {
		g.Observe(backoff.UnreachableSince(c.lastInbound()))
	}
}

// ended handles the end of a connection whose session lived for lived, err
// being why it ended; see once.
func (r *runner) ended(ctx context.Context, err error, lived time.Duration) (bool, error) {
	l := r.l
	if final := final(ctx, err); final != nil {
		return true, final
	}
	l.setState(ctx, LinkTransientFailure, err, r.addr)
	if _, ok := backoff.RetryAfter(err); ok {
		// The server pushed back: a failure however long the session
		// lived; with a Gate, the Gate (paused, or pacing) admits the
		// redial.
		if r.failed(err) {
			return true, r.gaveUp(ctx)
		}
		r.immediate = l.cfg.Gate != nil
		r.floor(err)
		return false, nil
	}
	if l.healthyAfter < 0 || lived >= l.healthyAfter {
		r.bo.Reset()
		r.failures = 0
		r.immediate = true
		return false, nil
	}
	if err == nil {
		err = errSessionEnded
	}
	if r.failed(err) {
		return true, r.gaveUp(ctx)
	}
	return false, nil
}

// final returns Run's error when an attempt that failed with err (or a
// connection that ended with err) ends Run: ctx's cause once ctx has ended,
// err itself when it is marked by backoff.Permanent or comes from a closed
// Gate; nil otherwise.
func final(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if backoff.IsPermanent(err) || errors.Is(err, backoff.ErrClosed) {
		return err
	}
	return nil
}

// failed records one more failure, moves on to the next address, and
// reports whether to give up.
func (r *runner) failed(err error) bool {
	r.lastErr = err
	r.failures++
	r.idx = (r.idx + 1) % len(r.l.cfg.Addrs)
	return r.l.cfg.MaxAttempts > 0 && r.failures >= r.l.cfg.MaxAttempts
}

// gaveUp returns the error of a Run that gives up.
func (r *runner) gaveUp(ctx context.Context) error {
	r.l.log.LogAttrs(ctx, slog.LevelWarn, "link gave up",
		slog.Int("failures", r.failures), slog.String("error", r.lastErr.Error()))
	return fmt.Errorf("%w after %d consecutive failures: %w", ErrLinkGaveUp, r.failures, r.lastErr)
}

// errSessionEnded stands for the failure of a short session that returned
// nil, in ErrLinkGaveUp's chain.
var errSessionEnded = errors.New("conn: session ended")

// halfCloseGrace bounds how long the Link waits, after the peer closed its
// side (EOF), for a Session that may still be writing its reply.
const halfCloseGrace = 10 * time.Second

// serve runs the Session on c until it returns, c dies or ctx ends, then
// closes c and waits for the Session. It returns why the connection ended:
// the Session's error when the Session ended it (or when that error is
// marked by backoff.Permanent), else the Conn's Err or ctx's cause.
//
// The peer's EOF (a close or a half-close) does not end the Session: its
// ctx is left alone and c open, so that it reads io.EOF and may still write
// its reply; serve waits up to halfCloseGrace for it to return.
func (l *Link) serve(ctx context.Context, c *Conn) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- l.cfg.Session(sctx, c) }()

	var why error
	select {
	case err := <-done:
		return sessionEnded(c, err)
	case <-c.Done():
		why = c.Err()
		if why == io.EOF { //nolint:errorlint // identity: Err stores the peer's EOF as io.EOF
			if err, ok := waitSession(ctx, done); ok {
				return sessionEnded(c, err)
			}
			if ctx.Err() != nil {
				why = context.Cause(ctx)
			}
		}
	case <-ctx.Done():
		why = context.Cause(ctx)
	}
	cancel(why)
	c.Close()
	if err := <-done; backoff.IsPermanent(err) && ctx.Err() == nil {
		return err
	}
	return why
}

// sessionEnded closes c after its Session returned err, and returns why the
// connection ended: err, or the Conn's Err when err is nil.
func sessionEnded(c *Conn, err error) error {
	c.Close()
	if err == nil {
		select {
		case <-c.Done():
			err = c.Err()
		default:
		}
	}
	return err
}

// waitSession waits up to halfCloseGrace for the Session's error on done;
// it reports false when ctx ended or the grace ran out first.
func waitSession(ctx context.Context, done <-chan error) (error, bool) {
	t := time.NewTimer(halfCloseGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err, true
	case <-ctx.Done():
	case <-t.C:
	}
	return nil, false
}
