package testkit

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// RegisterConfig describes one registration of a [Registerer].
type RegisterConfig struct {
	// Client sends the requests. Registerers sharing one share its
	// connection to the registrar. Required.
	Client *sipgo.Client
	// Registrar is the URI REGISTERs are sent to, e.g.
	// "sip:127.0.0.1:5060;transport=tcp". Its transport parameter, if any,
	// is the request's transport. Required.
	Registrar string
	// User is the AoR's user part and the digest username. Required.
	User string
	// Password is the digest password.
	Password string
	// Domain is the AoR's host; empty means "relink.test".
	Domain string
	// Contact is the binding's URI; empty means
	// "sip:<User>@127.0.0.1:5999;transport=tcp".
	Contact string
	// CallID is the registration's Call-ID; empty means a random one.
	CallID string
	// FreshChallenge answers every challenge on its own and forgets it, with
	// nc=1, as sipgo's DoDigestAuth does (each registration then costs two
	// transactions). False keeps the last challenge and sends credentials on
	// it, nc counting up, with every later REGISTER (one transaction each).
	FreshChallenge bool
}

// Registerer is a raw REGISTER client for one AoR: one Call-ID and one From
// tag for all its requests, CSeq counting up from 1 (RFC 3261 §10.2), and
// digest credentials computed with github.com/icholy/digest. It builds each
// request itself, so tests see exactly what goes on the wire and baselines
// behave as a gateway without relink does. Use it from one goroutine at a
// time; [Registerer.Transactions] may be read from any.
type Registerer struct {
	cfg       RegisterConfig
	registrar sipmsg.Uri
	aor       sipmsg.Uri
	contact   sipmsg.Uri
	tag       string
	cseq      uint32
	sent      atomic.Uint64

	chal     *digest.Challenge // kept for the next requests (not with FreshChallenge)
	authName string            // "Authorization" or "Proxy-Authorization"
	nc       int
}

// NewRegisterer returns a Registerer for cfg.
func NewRegisterer(cfg RegisterConfig) (*Registerer, error) {
	if cfg.Client == nil || cfg.Registrar == "" || cfg.User == "" {
		return nil, fmt.Errorf("testkit: RegisterConfig needs Client, Registrar and User")
	}
	if cfg.Domain == "" {
		cfg.Domain = "relink.test"
	}
	if cfg.Contact == "" {
		cfg.Contact = "sip:" + cfg.User + "@127.0.0.1:5999;transport=tcp"
	}
	if cfg.CallID == "" {
		cfg.CallID = cfg.User + "-" + rand.Text()
	}
	r := &Registerer{cfg: cfg, tag: rand.Text()[:16], cseq: 1,
		aor: sipmsg.Uri{Scheme: "sip", User: cfg.User, Host: cfg.Domain}}
	if err := sipmsg.ParseUri(cfg.Registrar, &r.registrar); err != nil {
		return nil, fmt.Errorf("testkit: registrar %q: %w", cfg.Registrar, err)
	}
	if err := sipmsg.ParseUri(cfg.Contact, &r.contact); err != nil {
		return nil, fmt.Errorf("testkit: contact %q: %w", cfg.Contact, err)
	}
	return r, nil
}

// CallID is the registration's Call-ID.
func (r *Registerer) CallID() string { return r.cfg.CallID }

// CSeq is the CSeq number the next request will carry.
func (r *Registerer) CSeq() uint32 { return r.cseq }

// Transactions counts the REGISTERs sent so far.
func (r *Registerer) Transactions() uint64 { return r.sent.Load() }

// Request builds the next REGISTER, with the next CSeq and credentials on
// the kept challenge (nc + 1) if there is one. expires < 0 leaves out the
// Expires header.
func (r *Registerer) Request(expires int) *sipmsg.Request {
	req := sipmsg.NewRequest(sipmsg.REGISTER, r.registrar)
	req.AppendHeader(&sipmsg.FromHeader{Address: r.aor, Params: sipmsg.HeaderParams{{K: "tag", V: r.tag}}})
	req.AppendHeader(&sipmsg.ToHeader{Address: r.aor})
	cid := sipmsg.CallIDHeader(r.cfg.CallID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: r.cseq, MethodName: sipmsg.REGISTER})
	r.cseq++
	req.AppendHeader(&sipmsg.ContactHeader{Address: r.contact, Params: sipmsg.NewParams()})
	if expires >= 0 {
		req.AppendHeader(sipmsg.NewHeader("Expires", strconv.Itoa(expires)))
	}
	if t, ok := r.registrar.UriParams.Get("transport"); ok {
		req.SetTransport(strings.ToUpper(t))
	}
	req.SetBody(nil)
	if r.chal != nil {
		r.nc++
		cred, err := digest.Digest(r.chal, digest.Options{
			Method: "REGISTER", URI: r.registrar.Addr(), Username: r.cfg.User, Password: r.cfg.Password, Count: r.nc,
		})
		if err == nil {
			req.AppendHeader(sipmsg.NewHeader(r.authName, cred.String()))
		}
	}
	return req
}

// Do sends req and returns its final response.
func (r *Registerer) Do(ctx context.Context, req *sipmsg.Request) (*sipmsg.Response, error) {
	r.sent.Add(1)
	return r.cfg.Client.Do(ctx, req)
}

// Register sends a REGISTER and, if it is challenged (401 or 407), answers
// the challenge once; it returns the last response.
func (r *Registerer) Register(ctx context.Context, expires int) (*sipmsg.Response, error) {
	res, err := r.Do(ctx, r.Request(expires))
	if err != nil || !challenged(res) {
		return res, err
	}
	if err := r.Keep(res); err != nil {
		return nil, err
	}
	res, err = r.Do(ctx, r.Request(expires))
	if r.cfg.FreshChallenge {
		r.chal = nil
	}
	return res, err
}

// Keep keeps the challenge of a 401 or 407 response for the next requests,
// nc starting again from 1.
func (r *Registerer) Keep(res *sipmsg.Response) error {
	name, auth := "WWW-Authenticate", "Authorization"
	if res.StatusCode == sipmsg.StatusProxyAuthRequired {
		name, auth = "Proxy-Authenticate", "Proxy-Authorization"
	}
	h := res.GetHeader(name)
	if h == nil {
		return fmt.Errorf("testkit: %d without %s", res.StatusCode, name)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		return fmt.Errorf("testkit: %s: %w", name, err)
	}
	r.chal, r.authName, r.nc = chal, auth, 0
	return nil
}

func challenged(res *sipmsg.Response) bool {
	return res.StatusCode == sipmsg.StatusUnauthorized || res.StatusCode == sipmsg.StatusProxyAuthRequired
}

// Granted is the expiry a 2xx response grants: the Contact's expires
// parameter, else the Expires header, else def.
func Granted(res *sipmsg.Response, def time.Duration) time.Duration {
	if c := res.Contact(); c != nil {
		if v, ok := c.Params.Get("expires"); ok {
			if s, err := strconv.Atoi(v); err == nil && s >= 0 {
				return time.Duration(s) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if s, err := strconv.Atoi(strings.TrimSpace(h.Value())); err == nil && s >= 0 {
			return time.Duration(s) * time.Second
		}
	}
	return def
}

// NewSipgoClient returns a sipgo client on a user agent of its own, closed
// when tb ends; Registerers sharing the client share its connection.
func NewSipgoClient(tb testing.TB, opts ...sipgo.UserAgentOption) *sipgo.Client {
	tb.Helper()
	ua, err := sipgo.NewUA(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ua.Close() })
	c, err := sipgo.NewClient(ua)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
