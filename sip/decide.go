package sip

import (
	"fmt"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/relinkgo/relink/backoff"
)

// action is what a trunk does next after one REGISTER transaction.
type action int

const (
	// ignore: a provisional (1xx) response; keep waiting for the final one.
	ignore action = iota
	// resendAuth: answer the challenge (decision.chal) in a new REGISTER.
	resendAuth
	// resendExpires: a 423; ask for exchange.expires (raised) again at once.
	resendExpires
	// resendRedirect: a 3xx; send again to decision.redirect.
	resendRedirect
	// registered: the binding is granted for decision.granted (or removed,
	// when the exchange unregisters).
	registered
	// unreachable: a timeout, a transport error, a dead flow or a 408. The
	// gate closes and scouts; no private backoff.
	unreachable
	// pushedBack: a 503. With a Retry-After the gate pauses for everyone;
	// without one the trunk backs off on its own policy first.
	pushedBack
	// backOff: 500, 502, 504, another 5xx, too many 3xx, an unusable 2xx:
	// the trunk's own backoff, then the gate.
	backOff
	// failed: the registrar refused this trunk (credentials, 403, 404, other
	// 4xx, 6xx): slow retry.
	failed
	// stopped: the context ended before an answer.
	stopped
)

// final reports whether a ends the exchange.
func (a action) final() bool { return a >= registered }

func (a action) String() string {
	names := [...]string{"ignore", "resend-auth", "resend-expires", "resend-redirect",
		"registered", "unreachable", "pushed-back", "back-off", "failed", "stopped"}
	if a >= 0 && int(a) < len(names) {
		return names[a]
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// exchange is the state of one registration exchange with one registrar:
// the REGISTER and the follow-ups that answer a challenge, a 423 or a 3xx.
type exchange struct {
	registrar  string        // the registrar URI, for errors
	expires    time.Duration // asked; raised by 423; 0 unregisters; askNone: no Expires
	challenges int           // 401/407 answered
	redirects  int           // 3xx followed
	n423       int           // 423 answered
	fresh      bool          // the credentials come from a challenge of this exchange

	transport    string // the configured registrar's: udp, tcp, tls, ws, wss
	host         string // the configured registrar's host
	foreign      bool   // a 3xx sent us to another host than the configured one
	authAnywhere bool   // answer challenges from hosts a 3xx sent us to
}

// askNone as exchange.expires sends no Expires: the registrar chooses.
const askNone = -time.Second

// reply is what one REGISTER transaction produced: a final (or provisional)
// response, or the error that left none.
type reply struct {
	resp      *sipmsg.Response
	contact   *sipmsg.Uri // the Contact the REGISTER carried
	sentCreds bool        // the REGISTER carried credentials
	err       error       // no response: a timeout, a transport error, a dead flow
	stopped   bool        // no response: the context ended
}

// decision is decide's verdict on one transaction.
type decision struct {
	act     action
	outcome backoff.Outcome // reported to the gate for this transaction
	err     error           // why, for final failures

	granted    time.Duration     // registered: the binding's lifetime (0: removed)
	contact    *sipmsg.Uri       // registered: the Contact bound
	retryAfter time.Duration     // pushedBack: the response's Retry-After
	flowTimer  time.Duration     // registered: a Flow-Timer header, if any
	path       []string          // registered: the 2xx's Path values
	svcRoute   []string          // registered: the 2xx's Service-Route values
	outbound   bool              // registered: the 2xx's Require lists outbound
	chal       *digest.Challenge // resendAuth: the challenge to answer
	proxy      bool              // resendAuth: it came in a 407
	redirect   *sipmsg.Uri       // resendRedirect: where to
	resetAuth  bool              // forget the kept challenge
	noRedirect bool              // forget a redirect target
	abandon    bool              // report nothing to the gate: the permit is abandoned
}

// decide is the trunk's response handling: given the exchange so far and
// one transaction's reply, it returns the exchange to continue with and what
// to do next. It is pure: no I/O, no clock, no trunk state.
func decide(x exchange, r reply) (exchange, decision) {
	switch {
	case r.stopped:
		// Cancelled by the trunk itself: nothing was learned about the
		// registrar, so the permit is abandoned (a ClientFailure would
		// reopen a closed gate as if the destination had answered).
		return x, decision{act: stopped, err: r.err, abandon: true}
	case r.resp == nil && tlsConfigError(r.err):
		// Connected, but no TLS: a configuration error, not a dead path.
		d := finalDecision(failed, fmt.Errorf("%w: %s: %w", ErrTLSConfig, x.registrar, r.err))
		d.noRedirect = true
		return x, d
	case r.resp == nil:
		// No response: the registrar (or the path to it) is unreachable.
		return x, decision{act: unreachable, outcome: backoff.Unreachable, err: r.err,
			noRedirect: true}
	}
	code := r.resp.StatusCode
	switch {
	case code < 200:
		return x, decision{act: ignore, outcome: backoff.Success}
	case code < 300:
		return x, decideOK(x, r)
	case code < 400:
		return decideRedirect(x, r)
	case code == 401 || code == 407:
		return decideChallenge(x, r)
	case code == 423:
		return decideTooBrief(x, r)
	}
	return x, decideFailure(statusError(x, r.resp))
}

// finalDecision is a final decision whose gate outcome follows its action.
func finalDecision(a action, err error) decision {
	d := decision{act: a, err: err}
	switch a {
	case registered:
		d.outcome = backoff.Success
	case unreachable:
		d.outcome = backoff.Unreachable
	case backOff:
		d.outcome = backoff.Overload(0)
	default:
		// Refusals and abandoned attempts are the client's own business and
		// say nothing against the registrar.
		d.outcome = backoff.ClientFailure
	}
	return d
}

func statusError(x exchange, res *sipmsg.Response) *StatusError {
	serr := &StatusError{Code: res.StatusCode, Reason: res.Reason, Registrar: x.registrar}
	if h := res.GetHeader("Retry-After"); h != nil {
		serr.RetryAfter, _ = parseRetryAfter(h.Value())
	}
	return serr
}

// decideFailure classifies a final failure status: 408, 5xx, other 4xx, 6xx.
func decideFailure(serr *StatusError) decision {
	switch code := serr.Code; {
	case code == 408:
		return finalDecision(unreachable, serr)
	case code == 503:
		d := finalDecision(pushedBack, serr)
		d.outcome, d.retryAfter = backoff.Overload(serr.RetryAfter), serr.RetryAfter
		return d
	case code >= 500 && code < 600:
		return finalDecision(backOff, serr)
	}
	return finalDecision(failed, serr)
}

// decideOK handles a 2xx: the grant, from our Contact's expires parameter,
// else the Expires header, else what was asked. A 2xx that does not list
// our Contact made no binding: backOff, retried through the gate.
func decideOK(x exchange, r reply) decision {
	if x.expires == 0 {
		return finalDecision(registered, nil) // unregistered
	}
	d := finalDecision(registered, nil)
	if h := r.resp.GetHeader("Flow-Timer"); h != nil {
		if ft, ok := parseFlowTimer(h.Value()); ok {
			d.flowTimer = ft
		}
	}
	asked := x.expires
	if asked < 0 {
		asked = DefaultExpires // RFC 3261 §10.3 step 8: the 200 says; if not, the default
	}
	var ours bool
	d.granted, ours = grantedExpiry(r.resp, r.contact, asked)
	if !ours {
		return finalDecision(backOff, fmt.Errorf("%w: 200 OK without our Contact: no binding made", ErrBadResponse))
	}
	if d.granted <= 0 {
		return finalDecision(backOff, fmt.Errorf("%w: 200 OK removed the binding", ErrBadResponse))
	}
	d.contact = r.contact
	d.path, d.svcRoute = headerValues(r.resp, "Path"), headerValues(r.resp, "Service-Route")
	for _, v := range headerValues(r.resp, "Require") {
		d.outbound = d.outbound || strings.EqualFold(v, "outbound")
	}
	return d
}

// decideChallenge answers a 401/407 once per fresh challenge (again for
// stale=true); a challenge to credentials computed from a fresh one means
// they are wrong.
func decideChallenge(x exchange, r reply) (exchange, decision) {
	serr := statusError(x, r.resp)
	if x.foreign && !x.authAnywhere {
		d := finalDecision(failed, fmt.Errorf("%w: no credentials for a host a 3xx named: %w",
			ErrRedirectRefused, serr))
		d.resetAuth, d.noRedirect = true, true
		return x, d
	}
	chal, proxy := pickChallenge(r.resp)
	if chal == nil {
		d := finalDecision(failed, fmt.Errorf("%w: no usable challenge: %w", ErrBadResponse, serr))
		d.resetAuth = true
		return x, d
	}
	if (r.sentCreds && x.fresh && !chal.Stale) || x.challenges >= maxChallenges {
		d := finalDecision(failed, fmt.Errorf("%w: %w", ErrCredentialsRejected, serr))
		d.resetAuth = true
		return x, d
	}
	x.fresh = true
	x.challenges++
	return x, decision{act: resendAuth, outcome: backoff.Success, chal: chal, proxy: proxy}
}

// decideTooBrief answers a 423 with Min-Expires (twice the interval
// without one), a few times at most.
func decideTooBrief(x exchange, r reply) (exchange, decision) {
	serr := statusError(x, r.resp)
	x.n423++
	cur := max(x.expires, 0)
	next := min(2*cur, MaxExpires)
	if h := r.resp.GetHeader("Min-Expires"); h != nil {
		if me, ok := parseExpires(h.Value()); ok && me > cur {
			next = me
		}
	}
	if next <= cur || x.n423 > max423 {
		return x, finalDecision(failed,
			fmt.Errorf("%w: 423 without a usable Min-Expires: %w", ErrBadResponse, serr))
	}
	x.expires = next
	return x, decision{act: resendExpires, outcome: backoff.ClientFailure}
}

// decideRedirect follows a 3xx to its first Contact, a few times at most.
func decideRedirect(x exchange, r reply) (exchange, decision) {
	x.redirects++
	c := r.resp.Contact()
	if c == nil || x.redirects > maxRedirects {
		e := ErrTooManyRedirects
		if c == nil {
			e = ErrBadResponse
		}
		d := finalDecision(backOff, fmt.Errorf("%w: %w", e, statusError(x, r.resp)))
		d.noRedirect = true
		return x, d
	}
	u := c.Address.Clone()
	u.User, u.Password, u.Headers = "", "", nil
	if transportRank(uriTransport(u)) < transportRank(x.transport) {
		d := finalDecision(backOff, fmt.Errorf("%w: %s is a weaker transport than %s: %w",
			ErrRedirectRefused, u.String(), x.transport, statusError(x, r.resp)))
		d.noRedirect = true
		return x, d
	}
	// The kept challenge belongs to the registrar that sent it; a host a
	// 3xx names gets credentials only if the user opted in.
	x.foreign = !strings.EqualFold(u.Host, x.host)
	return x, decision{act: resendRedirect, outcome: backoff.Success, redirect: u, resetAuth: true}
}

// grantedExpiry returns the binding lifetime a 2xx grants: the expires
// parameter of our Contact, else the Expires header, else what was asked.
// ok is false when the 2xx does not list our Contact: RFC 3261 §10.3 step 8
// has it list every current binding, so ours was not made.
func grantedExpiry(res *sipmsg.Response, ours *sipmsg.Uri, asked time.Duration) (d time.Duration, ok bool) {
	var mine *sipmsg.ContactHeader
	for _, h := range res.GetHeaders("Contact") {
		if c, isContact := h.(*sipmsg.ContactHeader); isContact && sameContact(&c.Address, ours) {
			mine = c
			break
		}
	}
	if mine == nil {
		return 0, false
	}
	if v, has := mine.Params.Get("expires"); has {
		if d, ok := parseContactExpires(v); ok {
			return d, true
		}
	}
	if h := res.GetHeader("Expires"); h != nil { // ours, no usable parameter
		if d, ok := parseExpires(h.Value()); ok {
			return d, true
		}
	}
	return asked, true
}

// sameContact compares the parts of two Contact URIs a registrar keys
// bindings by: scheme, user, host (case-insensitive) and port.
func sameContact(a, b *sipmsg.Uri) bool {
	if a == nil || b == nil {
		return false
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && a.User == b.User &&
		strings.EqualFold(a.Host, b.Host) && a.Port == b.Port
}
