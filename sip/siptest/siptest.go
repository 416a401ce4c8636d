// Package siptest provides an in-process SIP registrar for tests, as
// net/http/httptest provides an HTTP server: start one, point trunks at its
// URI, inspect the bindings it holds, and make it misbehave.
//
// The registrar listens on TCP and UDP on a free loopback port. It checks
// digest credentials (MD5, qop=auth, nonces with a lifetime, nc counting up
// on a reused nonce, stale=true for an expired nonce), keeps bindings that
// lapse unless refreshed, answers 423 with Min-Expires, and admits at most
// Capacity REGISTERs per second, answering the excess at once with 503 and
// Retry-After. It is a test double, not a production registrar.
//
//	srv, err := siptest.NewRegistrar(siptest.Config{Password: "secret"})
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer srv.Close()
//	// TrunkConfig{Registrars: []string{srv.URI()}, ...}
//	// ...
//	if n := len(srv.Bindings("sip:alice@example.com")); n != 1 { ... }
//
// AoRs are keyed as "user@host" (the To URI without scheme, port or
// parameters); every method taking an AoR accepts a SIP URI as well.
package siptest

import (
	"log/slog"
	"time"

	"github.com/relinkgo/relink/internal/registrar"
)

// Config configures a Registrar. The zero value is a registrar without
// authentication or capacity limit. In every field, zero means the default
// documented on it and a negative value turns the feature off.
type Config struct {
	// Realm is the digest realm of the challenges. Empty means
	// "relink.test".
	Realm string
	// Users maps usernames to passwords. When it is non-nil, only these
	// users are accepted.
	Users map[string]string
	// Password is accepted for any username when Users is nil.
	// Authentication is off when Users is nil and Password is empty.
	Password string
	// ProxyAuth challenges with 407 and Proxy-Authenticate instead of 401
	// and WWW-Authenticate.
	ProxyAuth bool
	// NonceLifetime is how long a nonce stays fresh: a valid answer on an
	// older one gets 401 with stale=true. Zero means 300 s; negative: nonces
	// never go stale.
	NonceLifetime time.Duration

	// DefaultExpires is granted to a REGISTER that asks for no expiry. Zero
	// means 3600 s.
	DefaultExpires time.Duration
	// MinExpires: a non-zero expiry below it is answered 423 with
	// Min-Expires. Zero means 60 s; negative: no minimum.
	MinExpires time.Duration
	// MaxExpires caps the granted expiry. Zero means 7200 s; negative: no
	// cap.
	MaxExpires time.Duration
	// FlowTimer, when positive, adds "Flow-Timer: N" (RFC 5626) to every
	// 200 OK to a REGISTER. Zero or negative: no header.
	FlowTimer time.Duration

	// Capacity is the number of REGISTERs per second the registrar serves;
	// the excess is answered at once with 503 and Retry-After. Zero or
	// negative: unlimited.
	Capacity float64
	// RetryAfter is the Retry-After of a 503 sent for lack of capacity,
	// rounded up to whole seconds. Zero means 1 s; negative: no header.
	RetryAfter time.Duration

	// Logger receives the registrar's and sipgo's logs. nil discards them.
	Logger *slog.Logger
}

// Registrar is an in-process SIP registrar. Its methods are safe for
// concurrent use.
type Registrar struct {
	r *registrar.Registrar
}

// NewRegistrar starts a registrar on a free loopback port. Close it when
// done.
func NewRegistrar(cfg Config) (*Registrar, error) {
	r, err := registrar.New(registrar.Config{
		Realm:          cfg.Realm,
		Users:          cfg.Users,
		Password:       cfg.Password,
		ProxyAuth:      cfg.ProxyAuth,
		NonceLifetime:  cfg.NonceLifetime,
		DefaultExpires: cfg.DefaultExpires,
		MinExpires:     cfg.MinExpires,
		MaxExpires:     cfg.MaxExpires,
		FlowTimer:      cfg.FlowTimer,
		Capacity:       cfg.Capacity,
		RetryAfter:     cfg.RetryAfter,
		Logger:         cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	return &Registrar{r: r}, nil
}

// Close stops the registrar and closes its connections. It is idempotent.
func (s *Registrar) Close() error { return s.r.Close() }

// Addr returns the host:port the registrar listens on (TCP and UDP).
func (s *Registrar) Addr() string { return s.r.Addr() }

// URI returns the registrar's TCP URI, "sip:127.0.0.1:PORT;transport=tcp".
func (s *Registrar) URI() string { return s.r.URI() }

// UDPURI returns the registrar's UDP URI, "sip:127.0.0.1:PORT".
func (s *Registrar) UDPURI() string { return s.r.UDPURI() }

// Realm returns the digest realm of the registrar's challenges.
func (s *Registrar) Realm() string { return s.r.Realm() }

// Binding is one live registration of an AoR.
type Binding struct {
	Contact   string    // the Contact URI
	Expires   time.Time // when the binding lapses unless refreshed
	CallID    string    // Call-ID of the REGISTER that last refreshed it
	CSeq      uint32    // its CSeq
	Source    string    // the client's host:port
	Transport string    // "TCP" or "UDP"
}

// Bindings returns the live bindings of aor (a SIP URI or "user@host").
func (s *Registrar) Bindings(aor string) []Binding {
	in := s.r.Bindings(aor)
	out := make([]Binding, len(in))
	for i, b := range in {
		out[i] = Binding(b)
	}
	return out
}

// Stats counts what the registrar saw.
type Stats struct {
	Registers   uint64         // REGISTERs received
	Options     uint64         // OPTIONS received
	ByStatus    map[int]uint64 // answers to REGISTERs by status code
	Shed        uint64         // REGISTERs answered 503 for lack of capacity
	Stale       uint64         // 401/407 answers with stale=true
	NonceReuse  uint64         // REGISTERs accepted on a nonce with nc > 1
	Bindings    int            // live bindings
	AoRs        int            // AoRs with at least one live binding
	Pings       uint64         // CRLF keepalive pings ("\r\n\r\n") received
	Accepted    uint64         // TCP connections accepted
	Connections int            // TCP connections open now
}

// Stats returns a snapshot of the registrar's counters.
func (s *Registrar) Stats() Stats {
	st := s.r.Stats()
	return Stats{Registers: st.Registers, Options: st.Options, ByStatus: st.ByStatus,
		Shed: st.Shed, Stale: st.Stale, NonceReuse: st.NonceReuse, Bindings: st.Bindings,
		AoRs: st.AoRs, Pings: st.Pings, Accepted: st.Accepted, Connections: st.Connections}
}

// SetOverload answers every request with 503 and, when retryAfter is
// positive, a Retry-After, until ClearOverload.
func (s *Registrar) SetOverload(retryAfter time.Duration) { s.r.SetOverload(retryAfter) }

// ClearOverload ends SetOverload.
func (s *Registrar) ClearOverload() { s.r.ClearOverload() }

// SetCapacity changes Config.Capacity while the registrar runs.
func (s *Registrar) SetCapacity(perSecond float64) { s.r.SetCapacity(perSecond) }

// SetSilent makes the registrar answer nothing, requests and CRLF
// keepalive pings alike, while its connections stay open (a hung server or
// a black-holed path); SetSilent(false) resumes.
func (s *Registrar) SetSilent(on bool) { s.r.SetSilent(on) }

// CloseConnections closes every TCP connection accepted so far (with a
// FIN), as a restarting server does, and returns how many it closed. The
// listener and the bindings stay.
func (s *Registrar) CloseConnections() int { return s.r.CloseConnections() }
