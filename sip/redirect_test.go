package sip

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// TestDecideRedirectSafety: a 3xx never moves a trunk to a weaker
// transport, a redirect to another host forgets the digest state, and a
// challenge from a host a 3xx sent us to gets no credentials.
func TestDecideRedirectSafety(t *testing.T) {
	t.Parallel()
	tcp := exchange{registrar: "sip:r;transport=tcp", expires: time.Minute, transport: "tcp", host: "r"}
	tls := exchange{registrar: "sips:r", expires: time.Minute, transport: "tls", host: "r"}
	for _, tc := range []struct {
		name    string
		x       exchange
		contact string
		refused bool
	}{
		{"tcp to udp", tcp, "<sip:evil.example;transport=udp>", true},
		{"tcp to default udp", tcp, "<sip:evil.example>", true},
		{"tls to tcp", tls, "<sip:evil.example;transport=tcp>", true},
		{"sips to sip", tls, "<sip:evil.example>", true},
		{"tcp to tcp", tcp, "<sip:other.example;transport=tcp>", false},
		{"tcp to tls", tcp, "<sips:other.example>", false},
		{"tls to tls", tls, "<sips:other.example>", false},
	} {
		_, d := decide(tc.x, reply{resp: resp(302, "Contact", tc.contact)})
		if tc.refused && (d.act != backOff || !errors.Is(d.err, ErrRedirectRefused) || !d.noRedirect) {
			t.Errorf("%s: %v (%v), want a refused redirect", tc.name, d.act, d.err)
		}
		if !tc.refused && (d.act != resendRedirect || !d.resetAuth) {
			t.Errorf("%s: %v, resetAuth %v; want followed, the digest state forgotten", tc.name, d.act, d.resetAuth)
		}
	}
	away := tcp
	away.foreign = true
	_, d := decide(away, reply{resp: resp(401, "WWW-Authenticate", chal)})
	if d.act != failed || !errors.Is(d.err, ErrRedirectRefused) || !d.noRedirect {
		t.Errorf("401 from a redirected host: %v (%v), want failed, no credentials", d.act, d.err)
	}
	away.authAnywhere = true
	if _, d := decide(away, reply{resp: resp(401, "WWW-Authenticate", chal)}); d.act != resendAuth {
		t.Errorf("401 from a redirected host, opted in: %v, want answered", d.act)
	}
}

// TestRedirectKeepsCredentials: a TCP registrar's 302 to evil.example
// gets evil.example no Digest answer, and no REGISTER over UDP.
func TestRedirectKeepsCredentials(t *testing.T) {
	ua := newTestUA(t)
	for _, target := range []string{"<sip:evil.example;transport=tcp>", "<sip:evil.example;transport=udp>"} {
		synctest.Test(t, func(t *testing.T) {
			reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
				answer: func(_ int, req *sipmsg.Request) *sipmsg.Response {
					if req.Recipient.Host == "evil.example" {
						res := sipmsg.NewResponseFromRequest(req, 401, "Unauthorized", nil)
						res.AppendHeader(sipmsg.NewHeader("WWW-Authenticate",
							`Digest realm="evil.example", nonce="n1", qop="auth", algorithm=MD5`))
						return res
					}
					res := sipmsg.NewResponseFromRequest(req, 302, "Moved", nil)
					var c sipmsg.ContactHeader
					if _, err := sipmsg.ParseAddressValue(target, &c.Address, &c.Params); err != nil {
						panic(err)
					}
					res.AppendHeader(&c)
					return res
				}}
			tr := virtualTrunk(t, ua, reg, TrunkConfig{Username: "alice", Password: "pw",
				UnregisterTimeout: -1, SlowRetry: time.Second})
			runFor(tr, 20*time.Second)
			for _, s := range reg.sent() {
				if s.host == "evil.example" && (s.auth || target == "<sip:evil.example;transport=udp>") {
					t.Fatalf("%s: sent %+v", target, s)
				}
			}
		})
	}
}
