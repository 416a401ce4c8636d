package sip

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/relinkgo/relink/backoff"
)

// Defaults of TrunkConfig.
const (
	// DefaultExpires is the registration interval a trunk asks for: RFC
	// 3261 §10.2.1.1's suggested default, as Asterisk uses. The flow's
	// keepalive, not the registration, detects a dead path, so a long
	// interval costs nothing in detection time and keeps the refresh load
	// low (pjsip's 300 s means twelve times as many REGISTERs).
	DefaultExpires = 3600 * time.Second
	// DefaultKeepAlive and DefaultKeepAliveTimeout bound the detection of a
	// silent TCP or TLS flow at 15 s, as conn's defaults do: a CRLF ping
	// after 10 s without inbound bytes (each flow draws its interval
	// uniformly from 80–100 % of it, RFC 5626 §4.4.1), dead 5 s later
	// without a pong. One ping per connection, however many trunks share it.
	DefaultKeepAlive        = 10 * time.Second
	DefaultKeepAliveTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds one REGISTER transaction: RFC 3261's
	// Timer F (64 × T1 = 32 s). A dead TCP flow fails it sooner.
	DefaultRequestTimeout = 32 * time.Second
	// DefaultUnregisterTimeout bounds the unregistration Run does on exit.
	DefaultUnregisterTimeout = 5 * time.Second
	// DefaultSlowRetry is the wait after the registrar refused the trunk
	// (credentials rejected, 403, 404, 6xx): pjsip's reg_retry_interval.
	DefaultSlowRetry = 5 * time.Minute
	// DefaultFailback is how often a trunk registered with a backup
	// registrar tries the first one again.
	DefaultFailback = 5 * time.Minute
	// DefaultQualify is the OPTIONS interval of a UDP registrar and of an
	// OptionsOnly trunk when TrunkConfig.Qualify is zero (pjsip's UDP
	// keep-alive is 15 s, Asterisk's qualify_frequency 60 s).
	DefaultQualify = 30 * time.Second
)

// Internal bounds.
const (
	maxRedirects  = 3 // 3xx followed in one attempt
	maxChallenges = 3 // 401/407 answered in one attempt (first, stale, stale)
	max423        = 4 // 423 retries in one attempt
	minRequestTO  = 100 * time.Millisecond
)

// TrunkConfig configures a Trunk. Registrars and AOR are required. In every
// other field the zero value is the default documented on it and a negative
// value turns the feature off (each field says what "off" means).
type TrunkConfig struct {
	// Registrars are the registrars' SIP URIs, e.g.
	// "sip:registrar.example.com:5060;transport=tcp", in order of
	// preference. The transport comes from the URI (transport= parameter,
	// sips: means TLS; UDP when absent).
	//
	// Failover policy: the trunk registers with the first. It moves on to
	// the next (wrapping around) when the one it uses fails as a
	// destination: a timeout, a transport error, a dead flow, a 408 or a
	// 503. Failures that are the trunk's own (401/403/404/6xx) and 500, 502
	// and 504 do not move it. While registered with any but the first, it
	// tries the first again every FailbackInterval (refreshes stay with the backup);
	// once the first accepts it, it removes its binding from the backup and
	// stays with the first.
	Registrars []string
	// AOR is the address-of-record to register, e.g.
	// "sip:alice@example.com" (the To and From URI).
	AOR string
	// Contact is the URI registered for the AOR. Empty means
	// "sip:USER@LOCALADDR;transport=T", built from the AOR's user and the
	// local address of the connection (or socket) the REGISTER leaves on.
	// Set it explicitly behind NAT or when a stable Contact matters.
	Contact string
	// Username is the digest username. Empty means the AOR's user part.
	Username string
	// Password is the digest password. It is never logged.
	Password string

	// Expires is the registration interval asked for, rounded to whole
	// seconds. Zero means DefaultExpires (3600 s); at most MaxExpires.
	// Negative asks for nothing: the REGISTER carries no Expires and the
	// registrar's grant is taken (DefaultExpires if its 200 OK names none).
	// A shorter grant is obeyed (the Contact's expires parameter wins over
	// the Expires header), and a 423 raises the interval to Min-Expires.
	// The trunk refreshes at a random point between 75 % and 85 % of the
	// grant, so that trunks registered together drift apart.
	Expires time.Duration

	// KeepAlive is how long a TCP or TLS flow may stay silent before a CRLF
	// ping (RFC 5626) is sent on it; each flow draws its interval from
	// 80–100 % of the value. A registrar's Flow-Timer shorter than this
	// wins. Zero means DefaultKeepAlive (10 s); negative disables
	// keepalive for this trunk (the flow may still be pinged for others).
	// Ignored for UDP (see Qualify).
	KeepAlive time.Duration
	// KeepAliveTimeout is how long after a ping the flow may stay silent
	// before it is declared dead, evicted from sipgo's connection pool and
	// every trunk on it re-registers. Zero means DefaultKeepAliveTimeout
	// (5 s); negative turns keepalive off for this trunk, as a negative
	// KeepAlive does (a ping nobody waits for detects nothing).
	KeepAliveTimeout time.Duration
	// Qualify is the interval of the OPTIONS requests that check a
	// registrar while the trunk is registered (and of an OptionsOnly
	// trunk's whole liveness). An OPTIONS answered with anything proves the
	// path; no answer within the qualify timeout (KeepAliveTimeout, 5 s by
	// default, at most RequestTimeout: sipgo retransmits it over UDP
	// meanwhile), or a transport error, counts as a dead flow. Zero means
	// the default: DefaultQualify (30 s) for a UDP registrar and an
	// OptionsOnly trunk, off for TCP, TLS, WS and WSS registrars (their
	// flows are probed with CRLF). Negative: off (refused for an
	// OptionsOnly trunk, which would then never learn anything). A silent
	// UDP registrar is detected within Qualify + the qualify timeout: 35 s
	// by default.
	Qualify time.Duration

	// RequestTimeout bounds each REGISTER (and OPTIONS) transaction. Zero
	// means DefaultRequestTimeout (32 s); at least 100 ms. Negative: no
	// bound of relink's; the transaction ends by sipgo's own timers (Timer
	// B/F, 32 s unless the application changed them) or a dead flow.
	RequestTimeout time.Duration
	// UnregisterTimeout bounds the unregistration (Expires: 0) Run sends
	// when its context ends, by progress: it gives up when this long has
	// passed without the registrar serving anyone through the trunk's gate.
	// The unregistration goes through the registrar's gate like any
	// REGISTER, so a Fleet that stops unregisters its trunks at the pace the
	// registrar serves (about N ÷ its rate, however large N) instead of
	// drawing 503s, while a silent registrar costs one bound. A 503 is
	// retried after its Retry-After when the pause fits this bound; a longer
	// one gives up at once (logged at Warn). In all, Run's exit waits at
	// most 12 times this bound, and never past the binding's end. A binding
	// not removed stays until it expires. Zero means
	// DefaultUnregisterTimeout (5 s); negative skips unregistration (the
	// binding expires by itself).
	UnregisterTimeout time.Duration

	// Backoff makes the policy applied, before going through the gate,
	// after a 500, 502, 504 or a 503 without Retry-After. nil means
	// backoff.Exponential's defaults (full jitter, 500 ms doubling to 60 s).
	// The policy is reset by each successful registration; when it says
	// backoff.Stop, the trunk waits SlowRetry.
	Backoff backoff.Factory
	// Gate admits this trunk's REGISTERs to its registrar. Share one Gate
	// among every trunk of the process that registers with the same
	// registrar (a Fleet does this for you), so that their recovery is
	// paced to what the registrar can serve and one 503 Retry-After pauses
	// them all. nil means a private gate per registrar (its MaxPushBack
	// is MaxRetryAfter, 5 min). A Gate guards one
	// destination: setting it with more than one Registrar is an error.
	Gate *backoff.Gate
	// SlowRetry is the wait after the registrar refused the trunk
	// (credentials rejected, 403, 404, 6xx), plus a random 0–10 %. Zero
	// means DefaultSlowRetry (5 min); at least 1 s. Negative: no retry; the
	// trunk stays Failed until Run's context ends.
	SlowRetry time.Duration
	// FailbackInterval is how often a trunk registered with a backup
	// registrar tries the first again. Zero means DefaultFailback (5 min);
	// at least 1 s. Negative: no failback; the trunk stays with the backup
	// until that one fails.
	FailbackInterval time.Duration
	// RedirectCredentials lets the trunk answer a challenge from a host a
	// 3xx sent it to. False (the default): credentials go only to the
	// configured registrars; such a challenge ends the attempt with
	// ErrRedirectRefused (slow retry, back to the configured registrar).
	// Either way a 3xx to a weaker transport (TLS to TCP, TCP to UDP) is
	// never followed, and a redirect forgets the digest state.
	RedirectCredentials bool

	// TLSConfig is the TLS client configuration for this trunk's sips:,
	// transport=tls and wss registrars (a client certificate per carrier,
	// its own roots). Nil means the UA's (UAConfig.TLSConfig), and when that
	// is nil too the system roots. Verification is never turned off by
	// relink; ServerName defaults to the registrar's host. A certificate the
	// trunk rejects is a configuration error (ErrTLSConfig: state Failed,
	// retried at SlowRetry).
	TLSConfig *tls.Config
	// OptionsOnly makes a trunk that never REGISTERs, for carriers that
	// authenticate by IP: it keeps its registrar qualified with OPTIONS (at
	// Qualify, DefaultQualify when zero) through the same gate and flows,
	// with the same states: Registered while the registrar answers (any
	// final response proves it alive), Backoff after a 503 (with
	// Retry-After, the gate pauses for every trunk on the registrar) or no
	// answer (the gate closes and scouts; the trunk moves on to its next
	// registrar). Expires, Contact, Username and Password are unused; it
	// has no Binding.
	OptionsOnly bool
	// RegID is the RFC 5626 reg-id of the binding at the first registrar
	// (the i-th registrar gets RegID+i; the targets an RFC 3263 lookup
	// gives for one registrar share its reg-id). Zero means 1. Negative
	// turns RFC 5626 outbound off for this trunk: no +sip.instance, reg-id,
	// Supported: outbound or ;ob, and a Contact built from each
	// connection's local address, which changes when the flow does. With
	// outbound on (the default), a Contact built by relink is made once and
	// kept for the trunk's life, across reconnects: see Binding.
	RegID int
	// OutboundProxy, if set, is the URI every REGISTER (and OPTIONS) of the
	// trunk is sent through, e.g. "sip:edge.example.com:5060;transport=tcp":
	// a loose Route to it (RFC 3261 §8.1.2, ;lr added) on each request,
	// which goes to the proxy's address over the proxy's transport; the
	// Request-URI stays the registrar's. Empty means none: requests go to
	// the registrar. The gate stays the registrar's.
	OutboundProxy string
	// Headers are added to every REGISTER and OPTIONS (User-Agent, X-...),
	// in order. Headers relink sets itself are refused by NewTrunk: Via,
	// From, To, Call-ID, CSeq, Contact, Expires, Max-Forwards,
	// Authorization, Proxy-Authorization, Route, Supported, Content-Length
	// and Content-Type (and their compact forms).
	Headers []sipmsg.Header
	// Resolver looks up a registrar given by name without a port (RFC
	// 3263: SRV records for the URI's transport, then A/AAAA). Nil means
	// net.DefaultResolver. See the package doc's "Registrars by name".
	Resolver *net.Resolver

	// OnStateChange, if set, is called after every state change, outside
	// the trunk's locks, from the trunk's goroutine. It must not block.
	OnStateChange func(TrunkStateChange)
	// Logger receives state changes (Info) and per-request details
	// (Debug). Passwords and Authorization headers are never logged. nil
	// discards.
	Logger *slog.Logger
	// MeterProvider provides the trunk's instruments (see the package doc);
	// nil means otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider provides a span per registration attempt; nil means
	// otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

func orDur(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// orOff is orDur that keeps a negative d (off, as -1) and raises a positive
// one to lo.
func orOff(d, def, lo time.Duration) time.Duration {
	if d < 0 {
		return -1
	}
	return max(orDur(d, def), lo)
}

// resolveDurations applies the defaults of the duration fields: zero is
// the default, negative is off.
func (r *resolved) resolveDurations() error {
	switch c := r.TrunkConfig; {
	case c.Expires < 0:
		r.Expires = askNone
	case c.Expires == 0:
		r.Expires = DefaultExpires
	case c.Expires > MaxExpires:
		return configErr("Expires %v above MaxExpires %v", c.Expires, MaxExpires)
	default:
		r.Expires = max(c.Expires, time.Second).Truncate(time.Second)
	}
	if r.KeepAlive >= 0 && r.KeepAliveTimeout >= 0 {
		r.keepAlive = orDur(r.KeepAlive, DefaultKeepAlive)
		r.kaTimeout = orDur(r.KeepAliveTimeout, DefaultKeepAliveTimeout)
	}
	r.RequestTimeout = orOff(r.RequestTimeout, DefaultRequestTimeout, minRequestTO)
	r.UnregisterTimeout = orOff(r.UnregisterTimeout, DefaultUnregisterTimeout, 0)
	r.SlowRetry = orOff(r.SlowRetry, DefaultSlowRetry, time.Second)
	r.FailbackInterval = orOff(r.FailbackInterval, DefaultFailback, time.Second)
	r.qualifyTO = r.kaTimeout
	if r.qualifyTO <= 0 {
		r.qualifyTO = DefaultKeepAliveTimeout
	}
	if r.RequestTimeout > 0 {
		r.qualifyTO = min(r.qualifyTO, r.RequestTimeout)
	}
	if r.OptionsOnly && r.Qualify < 0 {
		return configErr("an OptionsOnly trunk needs Qualify (zero: DefaultQualify), got %v", r.Qualify)
	}
	return nil
}

// qualifyFor is the OPTIONS interval at tg: Qualify, or its default
// (DefaultQualify for UDP and OptionsOnly, off otherwise); 0 when off.
func (r *resolved) qualifyFor(tg *target) time.Duration {
	switch {
	case r.Qualify > 0:
		return r.Qualify
	case r.Qualify < 0:
		return 0
	case r.OptionsOnly || tg.transport == "udp":
		return DefaultQualify
	}
	return 0
}

// reserved are the headers relink sets itself, by lower-case name (compact
// forms included): TrunkConfig.Headers may not carry them.
var reserved = map[string]bool{
	"via": true, "v": true, "from": true, "f": true, "to": true, "t": true,
	"call-id": true, "i": true, "cseq": true, "contact": true, "m": true,
	"expires": true, "max-forwards": true, "authorization": true,
	"proxy-authorization": true, "route": true, "supported": true, "k": true,
	"content-length": true, "l": true, "content-type": true, "c": true,
}

// resolveExtras checks and parses RegID, OutboundProxy and Headers.
func (r *resolved) resolveExtras() error {
	r.regID = -1
	if r.RegID >= 0 && !r.OptionsOnly {
		r.regID = max(r.RegID, 1)
	}
	if r.OutboundProxy != "" {
		p, err := parseTarget(r.OutboundProxy)
		if err != nil {
			return configErr("OutboundProxy: %w", err)
		}
		if p.uri.UriParams == nil {
			p.uri.UriParams = sipmsg.NewParams()
		}
		if !p.uri.UriParams.Has("lr") {
			p.uri.UriParams.Add("lr", "")
		}
		r.proxy = &p
	}
	for _, h := range r.Headers {
		if h == nil {
			return configErr("a nil header in Headers")
		}
		name := strings.ToLower(strings.TrimSpace(h.Name()))
		if name == "" || strings.ContainsAny(name, " :\r\n") || strings.ContainsAny(h.Value(), "\r\n") {
			return configErr("header %q: not a header name and one-line value", h.Name())
		}
		if reserved[name] {
			return configErr("header %q is set by relink", h.Name())
		}
	}
	return nil
}

// ErrInvalidConfig is wrapped by every error NewTrunk returns for a bad
// TrunkConfig.
var ErrInvalidConfig = errors.New("sip: invalid trunk config")

func configErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...)
}

// resolved is a TrunkConfig with its defaults applied and its URIs parsed.
type resolved struct {
	TrunkConfig
	aor       sipmsg.Uri
	contact   *sipmsg.Uri // nil: built from the flow
	username  string
	targets   []target
	keepAlive time.Duration // 0: off
	kaTimeout time.Duration
	qualifyTO time.Duration // the wait for an OPTIONS' answer
	regID     int           // RFC 5626 reg-id of the first registrar; -1: outbound off
	proxy     *target       // OutboundProxy, with ;lr
}

type target struct {
	raw       string // as configured, without a password
	uri       sipmsg.Uri
	transport string // lower case: udp, tcp, tls, ws, wss
	key       string // transport + "/" + host:port, the gate key
	dest      string // host:port to send to, from an RFC 3263 lookup; "": sipgo resolves uri
}

// redactURI drops the password of a "scheme:user:password@host..." URI
// without parsing it, so that even a URI that does not parse never carries
// its password into an error, a log or a span.
func redactURI(s string) string {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	at := strings.IndexByte(rest, '@')
	if at < 0 {
		return s
	}
	user, pw, ok := strings.Cut(rest[:at], ":")
	if !ok || strings.ContainsAny(pw, ";?") {
		return s // a host:port and parameters, not a password
	}
	return scheme + ":" + user + rest[at:]
}

// uriTransport is the transport a SIP URI asks for: its transport
// parameter (udp by default), made secure by a sips scheme.
func uriTransport(u *sipmsg.Uri) string {
	tp := "udp"
	if v, ok := u.UriParams.Get("transport"); ok && v != "" {
		tp = strings.ToLower(v)
	}
	if u.Scheme == "sips" {
		switch tp {
		case "tcp", "udp":
			tp = "tls"
		case "ws":
			tp = "wss"
		}
	}
	return tp
}

// transportRank orders transports by what they protect: datagrams, then
// streams, then secured streams. A 3xx never moves a trunk down.
func transportRank(tp string) int {
	switch tp {
	case "tls", "wss":
		return 2
	case "tcp", "ws":
		return 1
	}
	return 0
}

func parseTarget(s string) (target, error) {
	s = redactURI(s) // the password travels in Username/Password, never here
	var u sipmsg.Uri
	if err := sipmsg.ParseUri(strings.TrimSpace(s), &u); err != nil {
		return target{}, configErr("registrar %q: %v", s, err)
	}
	if u.Scheme != "sip" && u.Scheme != "sips" {
		return target{}, configErr("registrar %q: not a sip or sips URI", s)
	}
	if u.Host == "" {
		return target{}, configErr("registrar %q: no host", s)
	}
	raw := s // without a password: never in events, logs or errors
	u.User, u.Password = "", ""
	tp := uriTransport(&u)
	switch tp {
	case "udp", "tcp", "tls", "ws", "wss":
	default:
		return target{}, configErr("registrar %q: unsupported transport %q", s, tp)
	}
	port := u.Port
	if port == 0 {
		port = sipmsg.DefaultPort(tp)
	}
	hp := u.Host + ":" + fmt.Sprint(port)
	if strings.Contains(u.Host, ":") {
		hp = "[" + u.Host + "]:" + fmt.Sprint(port)
	}
	return target{raw: raw, uri: u, transport: tp, key: tp + "/" + hp}, nil
}

func (c *TrunkConfig) resolve() (*resolved, error) {
	r := &resolved{TrunkConfig: *c}
	if len(c.Registrars) == 0 {
		return nil, configErr("no registrar")
	}
	for _, s := range c.Registrars {
		t, err := parseTarget(s)
		if err != nil {
			return nil, err
		}
		r.targets = append(r.targets, t)
	}
	if c.Gate != nil && len(c.Registrars) > 1 {
		return nil, configErr("a Gate guards one registrar, got %d (use a Fleet)", len(c.Registrars))
	}
	if c.AOR == "" {
		return nil, configErr("no AOR")
	}
	if err := sipmsg.ParseUri(c.AOR, &r.aor); err != nil {
		return nil, configErr("AOR %q: %v", c.AOR, err)
	}
	if (r.aor.Scheme != "sip" && r.aor.Scheme != "sips") || r.aor.Host == "" {
		return nil, configErr("AOR %q: not a sip URI with a host", c.AOR)
	}
	r.aor.UriParams, r.aor.Headers, r.aor.Password = nil, nil, ""
	if c.Contact != "" {
		var u sipmsg.Uri
		if err := sipmsg.ParseUri(c.Contact, &u); err != nil {
			return nil, configErr("Contact %q: %v", c.Contact, err)
		}
		if u.Host == "" {
			return nil, configErr("Contact %q: no host", c.Contact)
		}
		r.contact = &u
	}
	r.username = c.Username
	if r.username == "" {
		r.username = r.aor.User
	}
	if c.Password != "" && r.username == "" {
		return nil, configErr("a Password needs a Username or an AOR with a user part")
	}
	if err := r.resolveDurations(); err != nil {
		return nil, err
	}
	if err := r.resolveExtras(); err != nil {
		return nil, err
	}
	if r.Backoff == nil {
		r.Backoff = backoff.NewFactory(backoff.Exponential{})
	}
	if r.Logger == nil {
		r.Logger = slog.New(slog.DiscardHandler)
	}
	return r, nil
}
