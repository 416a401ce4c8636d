package sip

import (
	"errors"
	"strings"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
)

// resp builds a response with headers given as name, value pairs.
func resp(code int, hdr ...string) *sipmsg.Response {
	r := sipmsg.NewResponse(code, "X")
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Contact" {
			var c sipmsg.ContactHeader
			if _, err := sipmsg.ParseAddressValue(hdr[i+1], &c.Address, &c.Params); err != nil {
				panic(err)
			}
			r.AppendHeader(&c)
			continue
		}
		r.AppendHeader(sipmsg.NewHeader(hdr[i], hdr[i+1]))
	}
	return r
}

const (
	chal      = `Digest realm="relink.test", nonce="n1", qop="auth", algorithm=MD5`
	chalStale = `Digest realm="relink.test", nonce="n2", qop="auth", algorithm=MD5, stale=true`
)

var ours = &sipmsg.Uri{Scheme: "sip", User: "alice", Host: "10.0.0.1", Port: 5060}

// TestDecide covers every response class, and the replies without a
// response, with no sipgo on the wire: decide is pure.
func TestDecide(t *testing.T) {
	t.Parallel()
	x0 := exchange{registrar: "sip:r", expires: 600 * time.Second}
	fresh := x0
	fresh.fresh, fresh.challenges = true, 1
	flowErr := &flowError{cause: errors.New("no pong")}
	for _, tc := range []struct {
		name    string
		x       exchange
		r       reply
		act     action
		outcome string
		retry   time.Duration
		granted time.Duration
		errIs   error
		code    int
		check   func(t *testing.T, x exchange, d decision)
	}{
		{name: "100 ignored", x: x0, r: reply{resp: resp(100)}, act: ignore, outcome: "success"},
		{name: "180 ignored", x: x0, r: reply{resp: resp(180)}, act: ignore, outcome: "success"},
		{name: "200 asked", x: x0, r: reply{resp: resp(200, "Contact", "<sip:alice@10.0.0.1:5060>"), contact: ours},
			act: registered, outcome: "success", granted: 600 * time.Second},
		{name: "200 Expires header", x: x0, r: reply{resp: resp(200, "Contact", "<sip:alice@10.0.0.1:5060>", "Expires", "120"), contact: ours},
			act: registered, outcome: "success", granted: 120 * time.Second},
		{name: "200 our Contact's expires wins", x: x0, r: reply{contact: ours, resp: resp(200,
			"Contact", "<sip:bob@10.0.0.9:5060>;expires=30",
			"Contact", "<sip:alice@10.0.0.1:5060>;expires=90", "Expires", "120")},
			act: registered, outcome: "success", granted: 90 * time.Second,
			check: func(t *testing.T, _ exchange, d decision) {
				if d.contact != ours {
					t.Errorf("bound %v, want our Contact", d.contact)
				}
			}},
		{name: "200 only Contact not ours", x: x0, r: reply{contact: ours,
			resp: resp(200, "Contact", "<sip:alice@192.0.2.1:5060>;expires=45")},
			act: backOff, outcome: "overload", errIs: ErrBadResponse},
		{name: "200 two foreign Contacts", x: x0, r: reply{contact: ours, resp: resp(200,
			"Contact", "<sip:a@192.0.2.1>;expires=45", "Contact", "<sip:b@192.0.2.2>;expires=46", "Expires", "300")},
			act: backOff, outcome: "overload", errIs: ErrBadResponse},
		{name: "200 without a Contact", x: x0, r: reply{contact: ours, resp: resp(200, "Expires", "300")},
			act: backOff, outcome: "overload", errIs: ErrBadResponse},
		{name: "200 our Contact, no parameter: Expires", x: x0, r: reply{contact: ours, resp: resp(200,
			"Contact", "<sip:alice@10.0.0.1:5060>", "Expires", "300")},
			act: registered, outcome: "success", granted: 300 * time.Second},
		{name: "200 without our Contact's binding", x: x0, r: reply{contact: ours, resp: resp(200,
			"Contact", "<sip:alice@10.0.0.1:5060>;expires=0")},
			act: backOff, outcome: "overload", errIs: ErrBadResponse},
		{name: "200 Flow-Timer", x: x0, r: reply{contact: ours, resp: resp(200, "Contact", "<sip:alice@10.0.0.1:5060>", "Flow-Timer", "25")},
			act: registered, outcome: "success", granted: 600 * time.Second,
			check: func(t *testing.T, _ exchange, d decision) {
				if d.flowTimer != 25*time.Second {
					t.Errorf("flow timer %v", d.flowTimer)
				}
			}},
		{name: "200 asked nothing, granted nothing", x: exchange{expires: askNone},
			r: reply{resp: resp(200, "Contact", "<sip:alice@10.0.0.1:5060>"), contact: ours}, act: registered, outcome: "success", granted: DefaultExpires},
		{name: "200 to an unregistration", x: exchange{expires: 0}, r: reply{resp: resp(200), contact: ours},
			act: registered, outcome: "success", granted: 0,
			check: func(t *testing.T, _ exchange, d decision) {
				if d.contact != nil {
					t.Error("an unregistration left a binding")
				}
			}},
		{name: "401 answered", x: x0, r: reply{resp: resp(401, "WWW-Authenticate", chal)},
			act: resendAuth, outcome: "success",
			check: func(t *testing.T, x exchange, d decision) {
				if !x.fresh || x.challenges != 1 || d.chal == nil || d.proxy {
					t.Errorf("x %+v, chal %v proxy %v", x, d.chal, d.proxy)
				}
			}},
		{name: "407 answered", x: x0, r: reply{resp: resp(407, "Proxy-Authenticate", chal)},
			act: resendAuth, outcome: "success",
			check: func(t *testing.T, _ exchange, d decision) {
				if !d.proxy {
					t.Error("407 not answered with Proxy-Authorization")
				}
			}},
		{name: "401 with a kept nonce (refresh) answered", x: x0,
			r: reply{resp: resp(401, "WWW-Authenticate", chal), sentCreds: true}, act: resendAuth, outcome: "success"},
		{name: "401 again: rejected", x: fresh, r: reply{resp: resp(401, "WWW-Authenticate", chal), sentCreds: true},
			act: failed, outcome: "client-failure", errIs: ErrCredentialsRejected, code: 401,
			check: func(t *testing.T, _ exchange, d decision) {
				if !d.resetAuth {
					t.Error("kept a rejected challenge")
				}
			}},
		{name: "401 stale again: answered", x: fresh,
			r: reply{resp: resp(401, "WWW-Authenticate", chalStale), sentCreds: true}, act: resendAuth, outcome: "success"},
		{name: "401 stale forever: rejected", x: exchange{fresh: true, challenges: maxChallenges},
			r:   reply{resp: resp(401, "WWW-Authenticate", chalStale), sentCreds: true},
			act: failed, outcome: "client-failure", errIs: ErrCredentialsRejected},
		{name: "401 without usable challenge", x: x0, r: reply{resp: resp(401, "WWW-Authenticate", `Basic realm="x"`)},
			act: failed, outcome: "client-failure", errIs: ErrBadResponse, code: 401},
		{name: "403", x: x0, r: reply{resp: resp(403)}, act: failed, outcome: "client-failure", code: 403},
		{name: "404", x: x0, r: reply{resp: resp(404)}, act: failed, outcome: "client-failure", code: 404},
		{name: "423 Min-Expires", x: x0, r: reply{resp: resp(423, "Min-Expires", "1800")},
			act: resendExpires, outcome: "client-failure",
			check: func(t *testing.T, x exchange, _ decision) {
				if x.expires != 1800*time.Second || x.n423 != 1 {
					t.Errorf("x %+v", x)
				}
			}},
		{name: "423 without Min-Expires doubles", x: x0, r: reply{resp: resp(423)},
			act: resendExpires, outcome: "client-failure",
			check: func(t *testing.T, x exchange, _ decision) {
				if x.expires != 1200*time.Second {
					t.Errorf("expires %v", x.expires)
				}
			}},
		{name: "423 too often", x: exchange{expires: time.Minute, n423: max423}, r: reply{resp: resp(423, "Min-Expires", "1800")},
			act: failed, outcome: "client-failure", errIs: ErrBadResponse, code: 423},
		{name: "423 at MaxExpires", x: exchange{expires: MaxExpires}, r: reply{resp: resp(423)},
			act: failed, outcome: "client-failure", errIs: ErrBadResponse},
		{name: "302 followed", x: x0, r: reply{resp: resp(302, "Contact", "<sip:u:pw@10.9.9.9:5080;transport=tcp>")},
			act: resendRedirect, outcome: "success",
			check: func(t *testing.T, x exchange, d decision) {
				if d.redirect == nil || d.redirect.Host != "10.9.9.9" || d.redirect.Password != "" || x.redirects != 1 {
					t.Errorf("redirect %v, x %+v", d.redirect, x)
				}
			}},
		{name: "3xx without Contact", x: x0, r: reply{resp: resp(301)},
			act: backOff, outcome: "overload", errIs: ErrBadResponse, code: 301},
		{name: "3xx too many", x: exchange{redirects: maxRedirects}, r: reply{resp: resp(302, "Contact", "<sip:10.9.9.9>")},
			act: backOff, outcome: "overload", errIs: ErrTooManyRedirects,
			check: func(t *testing.T, _ exchange, d decision) {
				if !d.noRedirect {
					t.Error("kept the redirect target")
				}
			}},
		{name: "408", x: x0, r: reply{resp: resp(408)}, act: unreachable, outcome: "unreachable", code: 408},
		{name: "480", x: x0, r: reply{resp: resp(480)}, act: failed, outcome: "client-failure", code: 480},
		{name: "500", x: x0, r: reply{resp: resp(500)}, act: backOff, outcome: "overload", code: 500},
		{name: "502", x: x0, r: reply{resp: resp(502)}, act: backOff, outcome: "overload", code: 502},
		{name: "504", x: x0, r: reply{resp: resp(504)}, act: backOff, outcome: "overload", code: 504},
		{name: "503 Retry-After", x: x0, r: reply{resp: resp(503, "Retry-After", "30")},
			act: pushedBack, outcome: "overload", retry: 30 * time.Second, code: 503},
		{name: "503 without Retry-After", x: x0, r: reply{resp: resp(503)},
			act: pushedBack, outcome: "overload", code: 503},
		{name: "503 absurd Retry-After clamped", x: x0, r: reply{resp: resp(503, "Retry-After", "1000000000000")},
			act: pushedBack, outcome: "overload", retry: MaxRetryAfter, code: 503},
		{name: "503 garbage Retry-After", x: x0, r: reply{resp: resp(503, "Retry-After", "soon")},
			act: pushedBack, outcome: "overload", code: 503},
		{name: "600", x: x0, r: reply{resp: resp(600)}, act: failed, outcome: "client-failure", code: 600},
		{name: "603", x: x0, r: reply{resp: resp(603)}, act: failed, outcome: "client-failure", code: 603},
		{name: "timeout", x: x0, r: reply{err: &timeoutError{err: ErrTimeout}},
			act: unreachable, outcome: "unreachable", errIs: ErrTimeout},
		{name: "transport error", x: x0, r: reply{err: errors.New("dial tcp: connection refused")},
			act: unreachable, outcome: "unreachable",
			check: func(t *testing.T, _ exchange, d decision) {
				if !d.noRedirect {
					t.Error("kept the redirect target after a transport error")
				}
			}},
		{name: "flow death", x: x0, r: reply{err: flowErr}, act: unreachable, outcome: "unreachable", errIs: ErrFlowDead},
		{name: "stopped", x: x0, r: reply{err: errors.New("ctx"), stopped: true}, act: stopped, outcome: "success",
			check: func(t *testing.T, _ exchange, d decision) {
				if !d.abandon {
					t.Error("a stopped REGISTER is reported to the gate; want its permit abandoned")
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, d := decide(tc.x, tc.r)
			kind, _, _ := strings.Cut(d.outcome.String(), "(")
			if d.act != tc.act || kind != tc.outcome || d.outcome.RetryAfter() != tc.retry {
				t.Errorf("decide = %v, outcome %v (retry after %v); want %v, %v (%v)",
					d.act, d.outcome, d.outcome.RetryAfter(), tc.act, tc.outcome, tc.retry)
			}
			if d.act == registered && d.granted != tc.granted {
				t.Errorf("granted %v, want %v", d.granted, tc.granted)
			}
			if d.act == pushedBack && d.retryAfter != tc.retry {
				t.Errorf("retryAfter %v, want %v", d.retryAfter, tc.retry)
			}
			if tc.errIs != nil && !errors.Is(d.err, tc.errIs) {
				t.Errorf("err %v, want %v", d.err, tc.errIs)
			}
			if tc.code != 0 {
				if se, ok := errors.AsType[*StatusError](d.err); !ok || se.Code != tc.code {
					t.Errorf("err %v, want a *StatusError %d", d.err, tc.code)
				}
			}
			if d.act.final() && d.act != registered && d.act != stopped && d.err == nil {
				t.Error("a failure without an error")
			}
			if tc.check != nil {
				tc.check(t, x, d)
			}
		})
	}
}

// TestDecideOutcomes: each final action reports one gate outcome.
func TestDecideOutcomes(t *testing.T) {
	t.Parallel()
	for a, want := range map[action]backoff.Outcome{
		registered: backoff.Success, unreachable: backoff.Unreachable,
		backOff: backoff.Overload(0), failed: backoff.ClientFailure,
	} {
		if got := finalDecision(a, nil).outcome; got.String() != want.String() {
			t.Errorf("%v: outcome %v, want %v", a, got, want)
		}
	}
	if s := action(42).String(); s != "action(42)" {
		t.Errorf("out of range: %q", s)
	}
}

// TestDecideOptions: for an OptionsOnly trunk any final answer is alive
// (even 404, 405 or 500), a 503 pushes back (its Retry-After to the gate),
// no answer is unreachable, a cancelled one abandons the permit.
func TestDecideOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		r       reply
		act     action
		outcome string
		retry   time.Duration
	}{
		{"200", reply{resp: resp(200)}, registered, "success", 0},
		{"404", reply{resp: resp(404)}, registered, "success", 0},
		{"405", reply{resp: resp(405)}, registered, "success", 0},
		{"500", reply{resp: resp(500)}, registered, "success", 0},
		{"503 Retry-After", reply{resp: resp(503, "Retry-After", "7")}, pushedBack, "overload(retry-after 7s)", 7 * time.Second},
		{"503", reply{resp: resp(503)}, pushedBack, "overload", 0},
		{"timeout", reply{err: &timeoutError{err: ErrTimeout}}, unreachable, "unreachable", 0},
		{"stopped", reply{err: errors.New("stop"), stopped: true}, stopped, "", 0},
	} {
		d := decideOptions("sip:carrier", tc.r)
		if d.act != tc.act || d.retryAfter != tc.retry || (tc.act == stopped) != d.abandon {
			t.Errorf("%s: %+v, want %v retry %v", tc.name, d, tc.act, tc.retry)
		}
		if tc.outcome != "" && !strings.HasPrefix(d.outcome.String(), tc.outcome) {
			t.Errorf("%s: outcome %v, want %s", tc.name, d.outcome, tc.outcome)
		}
	}
}
