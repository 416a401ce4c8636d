package conn

import (
	"context"
	"log/slog"
	"math"
	"net"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/internal/liveness"
)

// Default values of Config's fields. Together they bound the detection of a
// silent peer at 15 s, whether the flow is idle or busy:
//
//   - idle, no Prober: kernel keepalive probes from 5 s of silence, one a
//     second while unanswered; the connection is aborted at 15 s
//     (DefaultKeepAliveIdle +
//     DefaultKeepAliveCount × DefaultKeepAliveInterval; with TCP_USER_TIMEOUT
//     set, Linux aborts once UserTimeout has passed with a probe unanswered,
//     which is also 15 s);
//   - busy (data unacknowledged): TCP_USER_TIMEOUT aborts the connection
//     when sent data has gone unacknowledged for DefaultUserTimeout, 15 s;
//   - with a Prober (a hung peer application, or a middlebox that keeps
//     acknowledging for a peer that is gone): a probe after
//     DefaultProbeInterval of inbound silence, death DefaultProbeTimeout
//     later: 15 s after the last inbound byte.
//
// For comparison: Linux's defaults keep a half-open connection ~2 h 11 min
// when idle (keepalive 7200 s + 9 × 75 s, and forever when keepalive is
// off) and ~15.5 min when data is unacknowledged (tcp_retries2 = 15); Go's
// net.Dialer detects an idle peer in 150 s (15 s + 9 × 15 s) and a busy one
// only after the kernel's ~15.5 min; hashicorp/yamux within 40 s (30 s ping
// + 10 s write timeout); nats.go in 4–6 min (PingInterval 2 min,
// MaxPingsOut 2); RFC 5626 §4.4.1 declares a SIP flow failed 10 s after an
// unanswered CRLF ping.
const (
	// DefaultKeepAliveIdle is the inbound silence after which the kernel
	// sends its first keepalive probe.
	DefaultKeepAliveIdle = 5 * time.Second
	// DefaultKeepAliveInterval spaces unanswered keepalive probes.
	DefaultKeepAliveInterval = time.Second
	// DefaultKeepAliveCount is the number of unanswered keepalive probes
	// after which the kernel aborts the connection.
	DefaultKeepAliveCount = 10
	// DefaultUserTimeout is the TCP_USER_TIMEOUT set on Linux.
	DefaultUserTimeout = 15 * time.Second
	// DefaultProbeInterval is the inbound silence after which a Prober's
	// probe is sent.
	DefaultProbeInterval = 10 * time.Second
	// DefaultProbeTimeout is how long after a probe an inbound byte must
	// arrive.
	DefaultProbeTimeout = 5 * time.Second
)

// MinProbeInterval is the smallest ProbeInterval and ProbeTimeout used:
// shorter positive values are raised to it, so that no setting turns the
// prober into a busy loop.
const MinProbeInterval = liveness.MinInterval

// Config says how a Conn detects that its peer is gone. The zero value is
// the documented default of every field: kernel keepalive and
// TCP_USER_TIMEOUT bounding detection at 15 s, and no application probe. As
// in every relink Config, zero means the default and a negative value turns
// the setting off; each field says what "off" means for it.
type Config struct {
	// KeepAlive is the kernel's TCP keepalive: zero = 5 s idle, a probe a
	// second, 10 probes (15 s); off = Enable false with another field set,
	// as in KeepAliveConfig{Idle: -1}: no keepalive probes, so an idle
	// silent peer is noticed only by a Prober.
	//
	// Keepalive detects a silent peer on an idle connection (it sends
	// nothing while data is unacknowledged). The zero value means Enable
	// with DefaultKeepAliveIdle, DefaultKeepAliveInterval and
	// DefaultKeepAliveCount. The short interval costs nothing on a healthy
	// flow (it only spaces unanswered probes) and makes the bound robust to
	// loss: measured with 20 healthy idle flows at 10 % loss for 60 s, an
	// idle/interval/count of 5 s/5 s/2 killed 7 of them (two lost probes
	// in a row), 5 s/1 s/10 none. With Enable true, a zero field takes its
	// default and a negative field leaves the OS setting unchanged, as in
	// net.KeepAliveConfig. Only for TCP connections; ignored for others.
	KeepAlive net.KeepAliveConfig

	// UserTimeout is TCP_USER_TIMEOUT (Linux): zero = 15 s
	// (DefaultUserTimeout); negative = off: not set, so the kernel's own
	// bound applies (about 15.5 min with tcp_retries2 = 15).
	//
	// It is how long sent data may stay unacknowledged before the kernel
	// aborts the connection with ETIMEDOUT, which the Conn reports as
	// ErrUnresponsive: it bounds detection on a busy connection, where
	// keepalive does nothing. Rounded up to a millisecond and capped at
	// math.MaxInt32 ms. A no-op on other platforms. Linux also applies it
	// to keepalive (the connection is aborted once UserTimeout has passed
	// with a keepalive probe unanswered) and to a peer that advertises a
	// zero window, i.e. stopped reading, for that long: measured on Linux
	// 6.18, a Write blocked on such a peer fails with ETIMEDOUT about
	// UserTimeout after the window closed, although the peer's kernel
	// still acknowledges.
	UserTimeout time.Duration

	// Probe is the application-level ping: nil (the default) = no
	// application probe; the kernel options still bound detection.
	//
	// It is written into the stream after ProbeInterval without inbound
	// bytes; the peer's answer (any byte) proves it alive. It detects what
	// the kernel cannot: a hung peer application, or a peer lost behind a
	// middlebox that terminates TCP. There is no default Prober because the
	// Conn cannot know which bytes the peer's protocol accepts: use CRLF for
	// SIP (RFC 5626), or a ProberFunc writing your protocol's ping.
	Probe Prober

	// ProbeInterval is how long inbound traffic may pause before a probe is
	// sent: zero = 10 s (DefaultProbeInterval); negative = off: no
	// application probe, as with a nil Probe. Positive values below
	// MinProbeInterval are raised to it. Ignored when Probe is nil.
	ProbeInterval time.Duration

	// ProbeTimeout is how long, from the start of a probe, any inbound byte
	// must take to arrive before the peer is declared dead
	// (ErrUnresponsive); it also bounds the probe's own write: zero = 5 s
	// (DefaultProbeTimeout); negative = off: no application probe, as with
	// a nil Probe (a probe that can never fail proves nothing). Positive
	// values below MinProbeInterval are raised to it. Ignored when Probe is
	// nil. Probes are scheduled on a 10 ms tick: a silent peer is declared
	// dead within ProbeInterval + ProbeTimeout + 10 ms (20 ms when
	// ProbeTimeout is not a multiple of 10 ms).
	ProbeTimeout time.Duration

	// WriteTimeout bounds each Write: zero = none (the default); negative =
	// off, the same. When positive, a write deadline of now+WriteTimeout is
	// set before each Write (or the caller's own deadline, if earlier).
	// Without one, a Write blocked by a peer that does not read waits for
	// the caller's deadline, or for UserTimeout on Linux.
	WriteTimeout time.Duration

	// Logger receives the Conn's events (death at Info, probes at Debug).
	// nil discards them.
	Logger *slog.Logger

	// MeterProvider provides the Conn's metrics (see package doc). nil
	// means otel.GetMeterProvider().
	MeterProvider metric.MeterProvider

	// TracerProvider provides the Dialer's spans (one per DialContext).
	// nil means otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// keepAlive resolves KeepAlive: ok false means disabled.
func (c *Config) keepAlive() (ka net.KeepAliveConfig, ok bool) {
	ka = c.KeepAlive
	if ka == (net.KeepAliveConfig{}) {
		return net.KeepAliveConfig{Enable: true, Idle: DefaultKeepAliveIdle,
			Interval: DefaultKeepAliveInterval, Count: DefaultKeepAliveCount}, true
	}
	if !ka.Enable {
		return net.KeepAliveConfig{}, false
	}
	if ka.Idle == 0 {
		ka.Idle = DefaultKeepAliveIdle
	}
	if ka.Interval == 0 {
		ka.Interval = DefaultKeepAliveInterval
	}
	if ka.Count == 0 {
		ka.Count = DefaultKeepAliveCount
	}
	return ka, true
}

// userTimeout resolves UserTimeout: ok false means leave the OS default.
func (c *Config) userTimeout() (time.Duration, bool) {
	d := c.UserTimeout
	switch {
	case d == 0:
		return DefaultUserTimeout, true
	case d < 0:
		return 0, false
	case d < time.Millisecond:
		return time.Millisecond, true
	case d > math.MaxInt32*time.Millisecond:
		return math.MaxInt32 * time.Millisecond, true
	}
	return d, true
}

// probing resolves the probe settings: p nil means no application probe.
func (c *Config) probing() (p Prober, interval, timeout time.Duration) {
	if c.Probe == nil || c.ProbeInterval < 0 || c.ProbeTimeout < 0 {
		return nil, 0, 0
	}
	interval, timeout = c.ProbeInterval, c.ProbeTimeout
	if interval == 0 {
		interval = DefaultProbeInterval
	}
	if timeout == 0 {
		timeout = DefaultProbeTimeout
	}
	return c.Probe, max(interval, MinProbeInterval), max(timeout, MinProbeInterval)
}

func (c *Config) writeTimeout() time.Duration { return max(c.WriteTimeout, 0) }

// NetDialer returns a net.Dialer that applies the Config's kernel options
// (keepalive and TCP_USER_TIMEOUT, through ControlContext) to the TCP
// connections it dials. It does not probe: wrap its connections with Wrap,
// or drive a liveness monitor from the reader, for that. The caller may set
// the other fields (LocalAddr, Timeout, ...) on the returned value; it is
// meant for APIs that take a net.Dialer, such as sipgo's
// TransportTCP.DialerCreate:
//
//	DialerCreate: func(laddr net.Addr) net.Dialer {
//		d := cfg.NetDialer()
//		d.LocalAddr = laddr
//		return d
//	}
func (c Config) NetDialer() net.Dialer {
	var d net.Dialer
	if ka, ok := c.keepAlive(); ok {
		d.KeepAliveConfig = ka
	} else {
		d.KeepAlive = -1 // with KeepAliveConfig.Enable false: disabled
	}
	if ut, ok := c.userTimeout(); ok {
		d.ControlContext = func(_ context.Context, network, _ string, rc syscall.RawConn) error {
			if !isTCP(network) {
				return nil
			}
			return setUserTimeout(rc, ut)
		}
	}
	return d
}

func isTCP(network string) bool {
	return network == "tcp" || network == "tcp4" || network == "tcp6"
}
