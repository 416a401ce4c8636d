package conn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
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
	// Session is run on each new connection, in its own goroutine: the
	// user's handshake and serve loop. Required.
	//
	// Its ctx is cancelled when Run's ctx ends (with the same cause) or when
	// the connection is declared dead (with the Conn's Err as the cause,
	// for example ErrUnresponsive); the Link also closes the Conn then.
	// Session must return promptly once ctx is done or the Conn is closed:
	// the Link waits for it before it redials or before Run returns, so two
	// sessions of one Link never overlap. Whatever Session returns, the Link
	// closes the Conn and reconnects; the error (or the Conn's Err, if it
	// died first) is reported in the StateChange to TransientFailure. A
	// panic in Session is not recovered.
	Session func(ctx context.Context, c *Conn) error
	// Backoff makes the delay policy of each Run; nil means
	// backoff.NewFactory(backoff.Exponential{}): full jitter, delays drawn
	// from [0, min(60 s, 500 ms·2^n)], never giving up. The policy is asked
	// for a delay after each failed attempt and after each session that
	// ended before HealthyAfter; it is Reset after a healthy session. A
	// delay of backoff.Stop makes Run give up (see ErrLinkGaveUp).
	Backoff backoff.Factory
	// Gate, if set, admits every dial, redials included: the Link calls
	// Gate.Acquire after the backoff delay and reports the dial's outcome
	// through Permit.Done — Success when the connection is established,
	// Unreachable when the dial timed out or was refused, reset or found no
	// route, ClientFailure for other errors (an unknown host, a bad
	// address). Share one Gate among all the Links (and trunks) that
	// recover towards the same server. Nil means no gate.
	Gate *backoff.Gate
	// HealthyAfter is how long a session must have lived for its
	// connection to count as healthy. When a healthy connection is lost,
	// the backoff policy is Reset and the first replacement is dialed at
	// once (RFC 5626 §4.5, "the first replacement flow at once"), still
	// through the Gate. Zero means DefaultHealthyAfter (30 s); negative
	// means every established connection counts as healthy.
	HealthyAfter time.Duration
	// DialTimeout bounds each dial (the Gate's wait is not included). Zero
	// means DefaultDialTimeout (20 s); negative means no bound besides the
	// Dialer's own and Run's ctx.
	DialTimeout time.Duration
	// MaxAttempts, when positive, makes Run give up after this many
	// consecutive failures — failed dials and sessions that ended before
	// HealthyAfter — and return an error wrapping ErrLinkGaveUp and the
	// last failure. Zero or negative: never give up (the default).
	MaxAttempts int
	// OnStateChange, if set, is called after each change of State, in
	// order, from Run's goroutine and outside the Link's lock. It must not
	// block: the Link does not move on until it returns.
	OnStateChange func(StateChange)
	// Logger receives state changes at Info and attempts at Debug; nil
	// discards.
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
// until its context ends. A connection dies when the Session returns or
// when the Conn declares its peer gone (Conn.Done), whichever comes first.
//
// States follow grpc-go's vocabulary: Idle until Run, then Connecting (the
// Gate's wait and the dial), Ready (the Session runs), TransientFailure
// (waiting to try again), and Shutdown when Run returns. State,
// WaitForStateChange and LinkConfig.OnStateChange observe them.
//
// Telemetry (no-op unless providers are given or the globals are set):
//   - relink.link.connections, an UpDownCounter in {connection}: running
//     links by relink.link.state (CONNECTING, READY, TRANSIENT_FAILURE) and
//     network.transport; a Link counts from Run's start to its return;
//   - relink.link.attempts, a Counter in {attempt}: dials, first ones and
//     reconnects, by server.address, network.transport and relink.outcome
//     (success, unreachable, client_failure, canceled);
//   - one span per attempt, relink.link.connect (the Gate's wait, marked by
//     a "gate admitted" event, then the dial, whose conn.Dial span is its
//     child), with server.address, relink.link.attempt and, on failure,
//     error.type.
//
// The methods of a Link are safe for concurrent use.
type Link struct {
	cfg          LinkConfig // Addrs copied
	dialer       *Dialer
	network      string
	newBackoff   backoff.Factory
	healthyAfter time.Duration // < 0: always healthy
	dialTimeout  time.Duration // <= 0: none
	log          *slog.Logger
	inst         *linkInstruments
	lastOutcome  attemptOutcome // of the last dial; only Run's goroutine uses it

	mu      sync.Mutex
	state   State
	changed chan struct{} // closed and replaced on each change of state
	running bool
}

// NewLink validates cfg and returns a Link in state Idle. The returned
// errors wrap ErrInvalidLinkConfig.
func NewLink(cfg LinkConfig) (*Link, error) {
	invalid := func(format string, args ...any) (*Link, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrInvalidLinkConfig}, args...)...)
	}
	if cfg.Session == nil {
		return invalid("Session is nil")
	}
	if len(cfg.Addrs) == 0 {
		return invalid("Addrs is empty")
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
		if network == "tcp" || network == "tcp4" || network == "tcp6" {
			if _, _, err := net.SplitHostPort(a); err != nil {
				return invalid("Addrs[%d] %q: %v", i, a, err)
			}
		}
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
		changed:      make(chan struct{}),
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
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.inst = newLinkInstruments(cfg.MeterProvider, cfg.TracerProvider, network, cfg.Addrs)
	return l, nil
}

// State returns the Link's current state.
func (l *Link) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

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
func (l *Link) WaitForStateChange(ctx context.Context, from State) bool {
	l.mu.Lock()
	if l.state != from {
		l.mu.Unlock()
		return true
	}
	ch := l.changed
	l.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	}
}

// setState changes the state, wakes the waiters, records the metric and
// calls OnStateChange. Only Run's goroutine calls it, so events are ordered.
func (l *Link) setState(to State, err error, addr string) {
	l.mu.Lock()
	from := l.state
	if from == to {
		l.mu.Unlock()
		return
	}
	l.state = to
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()

	l.inst.stateChanged(from, to)
	if l.log.Enabled(context.Background(), slog.LevelInfo) {
		attrs := []slog.Attr{slog.String("from", from.String()), slog.String("to", to.String())}
		if addr != "" {
			attrs = append(attrs, slog.String("server.address", addr))
		}
		if err != nil {
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		l.log.LogAttrs(context.Background(), slog.LevelInfo, "link state", attrs...)
	}
	if l.cfg.OnStateChange != nil {
		l.cfg.OnStateChange(StateChange{From: from, To: to, Err: err, Addr: addr})
	}
}

// Run keeps the link up until ctx ends: it dials Addrs (through the Gate),
// runs the Session on each connection, and when the connection dies waits
// (the backoff delay, then the Gate) and redials. The first dial, and the
// first redial after a healthy connection, are made without a backoff delay.
//
// When ctx ends, Run cancels the Session's context, closes the connection,
// waits for the Session to return and returns context.Cause(ctx). It returns
// an error wrapping ErrLinkGaveUp only when told to give up (MaxAttempts, or
// a policy that returns backoff.Stop), and ErrLinkRunning at once if another
// Run on the same Link has not returned. Run may be called again after it
// has returned; the Link then starts over from Shutdown.
func (l *Link) Run(ctx context.Context) error {
	l.mu.Lock()
	if l.running {
		l.mu.Unlock()
		return ErrLinkRunning
	}
	l.running = true
	l.mu.Unlock()

	addr, err := l.loop(ctx)

	l.setState(Shutdown, err, addr)
	l.mu.Lock()
	l.running = false
	l.mu.Unlock()
	return err
}

// loop is Run's body; it returns the last address used and Run's error.
func (l *Link) loop(ctx context.Context) (string, error) {
	bo := l.newBackoff()
	bo.Reset()
	var (
		timer     *time.Timer
		idx       int
		failures  int    // consecutive attempts without a healthy session
		immediate = true // no backoff delay before the next attempt
		lastErr   error
		addr      string
		attempt   int
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	gaveUp := func() (string, error) {
		err := fmt.Errorf("%w after %d consecutive failures: %w", ErrLinkGaveUp, failures, lastErr)
		l.log.LogAttrs(ctx, slog.LevelWarn, "link gave up",
			slog.Int("failures", failures), slog.String("error", lastErr.Error()))
		return addr, err
	}
	// failed records one more failure and reports whether to give up.
	failed := func(err error) bool {
		lastErr = err
		failures++
		idx = (idx + 1) % len(l.cfg.Addrs)
		return l.cfg.MaxAttempts > 0 && failures >= l.cfg.MaxAttempts
	}
	for {
		if err := context.Cause(ctx); err != nil {
			return addr, err
		}
		if !immediate {
			d := bo.NextBackOff()
			if d == backoff.Stop {
				return gaveUp()
			}
			if d > 0 {
				if timer == nil {
					timer = time.NewTimer(d)
				} else {
					timer.Reset(d)
				}
				select {
				case <-timer.C:
				case <-ctx.Done():
					return addr, context.Cause(ctx)
				}
			}
		}
		immediate = false
		addr = l.cfg.Addrs[idx]
		attempt++
		l.setState(Connecting, nil, addr)
		c, err := l.dial(ctx, idx, attempt)
		if err != nil {
			if ctx.Err() != nil {
				return addr, context.Cause(ctx)
			}
			l.setState(TransientFailure, err, addr)
			if failed(err) {
				return gaveUp()
			}
			// The destination is unreachable: with a Gate, that is the
			// gate's business (it closes and scouts, so the path's return
			// is noticed within ScoutMax); a private backoff on top would
			// only delay this link's recovery.
			immediate = l.cfg.Gate != nil && l.lastOutcome == outcomeUnreachable
			continue
		}

		l.setState(Ready, nil, addr)
		start := time.Now()
		err = l.serve(ctx, c)
		if ctx.Err() != nil {
			return addr, context.Cause(ctx)
		}
		l.setState(TransientFailure, err, addr)
		if l.healthyAfter < 0 || time.Since(start) >= l.healthyAfter {
			bo.Reset()
			failures = 0
			immediate = true
			continue
		}
		if err == nil {
			err = errSessionEnded
		}
		if failed(err) {
			return gaveUp()
		}
	}
}

// errSessionEnded stands for the failure of a short session that returned
// nil, in ErrLinkGaveUp's chain.
var errSessionEnded = errors.New("conn: session ended")

// dial makes one attempt at Addrs[idx]: the Gate's admission, then the dial,
// in one span.
func (l *Link) dial(ctx context.Context, idx, attempt int) (*Conn, error) {
	addr := l.cfg.Addrs[idx]
	ctx, span := l.inst.tracer.Start(ctx, "relink.link.connect", l.inst.spanOpts[idx]...)
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("relink.link.attempt", attempt))
	}
	var permit *backoff.Permit
	if l.cfg.Gate != nil {
		p, err := l.cfg.Gate.Acquire(ctx)
		if err != nil {
			span.SetStatus(codes.Error, "gate: "+err.Error())
			return nil, err
		}
		permit = p
		span.AddEvent("gate admitted")
	}
	dctx := ctx
	if l.dialTimeout > 0 {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(ctx, l.dialTimeout)
		defer cancel()
	}
	c, err := l.dialer.DialContext(dctx, l.network, addr)
	if err == nil && c == nil {
		err = errors.New("conn: Dialer returned a nil Conn")
	}

	o := outcomeSuccess
	switch {
	case err == nil:
	case ctx.Err() != nil:
		o = outcomeCanceled
	case dialUnreachable(err) || dctx.Err() != nil:
		o = outcomeUnreachable
	default:
		o = outcomeClientFailure
	}
	if permit != nil {
		if o == outcomeCanceled {
			permit.Abandon() // the attempt told us nothing about the server
		} else {
			permit.Done(l.gateOutcome(o))
		}
	}
	l.lastOutcome = o
	l.inst.attempt(ctx, idx, o)
	if err != nil {
		if span.IsRecording() {
			span.SetAttributes(attribute.String("error.type", dialErrorType(err)))
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		l.log.LogAttrs(ctx, slog.LevelDebug, "link dial failed", slog.String("server.address", addr),
			slog.Int("attempt", attempt), slog.String("error", err.Error()))
		if c != nil {
			c.Close()
		}
		return nil, err
	}
	l.log.LogAttrs(ctx, slog.LevelDebug, "link connected", slog.String("server.address", addr),
		slog.Int("attempt", attempt))
	return c, nil
}

// gateOutcome maps an attempt's outcome to the Gate's vocabulary.
func (l *Link) gateOutcome(o attemptOutcome) backoff.Outcome {
	switch o {
	case outcomeSuccess:
		return backoff.Success
	case outcomeUnreachable:
		return backoff.Unreachable
	}
	return backoff.ClientFailure
}

// serve runs the Session on c until it returns, c dies or ctx ends, then
// closes c and waits for the Session. It returns why the connection ended.
func (l *Link) serve(ctx context.Context, c *Conn) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan error, 1)
	go func() { done <- l.cfg.Session(sctx, c) }()

	var why error
	select {
	case err := <-done:
		c.Close()
		if err == nil {
			select {
			case <-c.Done():
				err = c.Err()
			default:
			}
		}
		return err
	case <-c.Done():
		why = c.Err()
	case <-ctx.Done():
		why = context.Cause(ctx)
	}
	cancel(why)
	c.Close()
	<-done
	return why
}

// dialUnreachable reports whether a dial error says the destination (or the
// path to it) did not answer, as opposed to a failure of this client's own.
func dialUnreachable(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return dns.IsTimeout || dns.IsTemporary
	}
	for _, target := range unreachableErrs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

var unreachableErrs = []error{
	context.DeadlineExceeded,
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
	syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.ENETDOWN,
	syscall.ETIMEDOUT, syscall.EPIPE,
	// A custom Dial whose handshake (TLS, a proxy) saw the peer hang up.
	io.EOF, io.ErrUnexpectedEOF,
}

// dialErrorType returns a low-cardinality error.type for a dial error.
func dialErrorType(err error) string {
	var dns *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &dns):
		return "dns"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE):
		return "connection_reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return "host_unreachable"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return "network_unreachable"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT),
		errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "_OTHER"
}

// attemptOutcome classifies an attempt for metrics and the Gate.
type attemptOutcome int

const (
	outcomeSuccess attemptOutcome = iota
	outcomeUnreachable
	outcomeClientFailure
	outcomeCanceled
	numAttemptOutcomes
)

var attemptOutcomeNames = [numAttemptOutcomes]string{"success", "unreachable", "client_failure", "canceled"}

// linkInstruments holds a Link's telemetry. Attribute sets are built once,
// in NewLink, so recording allocates nothing with a no-op provider.
type linkInstruments struct {
	links    metric.Int64UpDownCounter
	attempts metric.Int64Counter
	tracer   trace.Tracer
	byState  [Shutdown]metric.AddOption             // Connecting, Ready, TransientFailure
	byAddr   [][numAttemptOutcomes]metric.AddOption // per address and outcome
	spanOpts [][]trace.SpanStartOption              // per address
}

func newLinkInstruments(mp metric.MeterProvider, tp trace.TracerProvider, network string, addrs []string) *linkInstruments {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m := mp.Meter(ScopeName)
	in := &linkInstruments{tracer: tp.Tracer(ScopeName)}
	transport := network
	switch network {
	case "tcp", "tcp4", "tcp6":
		transport = "tcp"
	}
	tr := attribute.String("network.transport", transport)
	for s := Connecting; s < Shutdown; s++ {
		in.byState[s] = metric.WithAttributeSet(attribute.NewSet(tr, attribute.String("relink.link.state", s.String())))
	}
	in.byAddr = make([][numAttemptOutcomes]metric.AddOption, len(addrs))
	in.spanOpts = make([][]trace.SpanStartOption, len(addrs))
	for i, a := range addrs {
		sa := attribute.String("server.address", a)
		for o := range numAttemptOutcomes {
			in.byAddr[i][o] = metric.WithAttributeSet(attribute.NewSet(sa, tr,
				attribute.String("relink.outcome", attemptOutcomeNames[o])))
		}
		in.spanOpts[i] = []trace.SpanStartOption{
			trace.WithAttributes(sa, tr),
			trace.WithSpanKind(trace.SpanKindClient),
		}
	}
	// Errors from instrument creation only mean a misconfigured SDK; the
	// returned instruments are then no-ops.
	in.links, _ = m.Int64UpDownCounter("relink.link.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Running links by relink.link.state (CONNECTING, READY, TRANSIENT_FAILURE)."))
	in.attempts, _ = m.Int64Counter("relink.link.attempts", metric.WithUnit("{attempt}"),
		metric.WithDescription("Dials made by links, first connections and reconnects, by relink.outcome."))
	return in
}

func (in *linkInstruments) stateChanged(from, to State) {
	ctx := context.Background()
	if from > Idle && from < Shutdown {
		in.links.Add(ctx, -1, in.byState[from])
	}
	if to > Idle && to < Shutdown {
		in.links.Add(ctx, 1, in.byState[to])
	}
}

func (in *linkInstruments) attempt(ctx context.Context, idx int, o attemptOutcome) {
	in.attempts.Add(ctx, 1, in.byAddr[idx][o])
}
