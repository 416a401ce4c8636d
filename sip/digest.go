package sip

import (
	"crypto/rand"

	sipmsg "github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// authState is the digest state a trunk keeps per registrar. sipgo's helper
// answers each challenge with nc=1 and forgets it, so every refresh costs a
// 401 round trip; relink keeps the last challenge and answers the next
// REGISTER with it directly, nc counting up (RFC 7616 §3.4), until the
// registrar says the nonce is stale.
type authState struct {
	chal   *digest.Challenge
	proxy  bool // 407: Proxy-Authorization
	nc     int
	cnonce string
}

func (a *authState) set(c *digest.Challenge, proxy bool) {
	a.chal, a.proxy, a.nc = c, proxy, 0
	a.cnonce = rand.Text()[:16]
}

func (a *authState) reset() { *a = authState{} }

// header returns the Authorization (or Proxy-Authorization) header for the
// next request, counting nc up; nil without a challenge.
func (a *authState) header(method, uri, user, pass string) sipmsg.Header {
	if a.chal == nil {
		return nil
	}
	a.nc++
	cred, err := digest.Digest(a.chal, digest.Options{
		Method: method, URI: uri, Username: user, Password: pass,
		Count: a.nc, Cnonce: a.cnonce,
	})
	if err != nil {
		a.reset()
		return nil
	}
	name := "Authorization"
	if a.proxy {
		name = "Proxy-Authorization"
	}
	return sipmsg.NewHeader(name, cred.String())
}

// pickChallenge returns the first challenge of res that relink can answer:
// WWW-Authenticate for a 401, Proxy-Authenticate for a 407.
func pickChallenge(res *sipmsg.Response) (*digest.Challenge, bool) {
	name, proxy := "WWW-Authenticate", false
	if res.StatusCode == sipmsg.StatusProxyAuthRequired {
		name, proxy = "Proxy-Authenticate", true
	}
	for _, h := range res.GetHeaders(name) {
		if c, err := parseChallenge(h.Value()); err == nil {
			return c, proxy
		}
	}
	return nil, proxy
}
