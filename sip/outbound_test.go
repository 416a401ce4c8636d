package sip

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/registrar"
)

// wireReq is a request as a registrar received it.
type wireReq struct {
	method, ruri, source string
	headers              map[string][]string // lower-case name → values
}

// wire records the requests a registrar answered (registrar.Config's
// ModifyResponse sees each request), and lets a test edit the responses.
type wire struct {
	mu     sync.Mutex
	reqs   []wireReq
	modify func(req *sipmsg.Request, res *sipmsg.Response)
}

func (w *wire) see(req *sipmsg.Request, res *sipmsg.Response) {
	wr := wireReq{method: req.Method.String(), ruri: req.Recipient.String(), source: req.Source(),
		headers: make(map[string][]string)}
	for _, h := range req.Headers() {
		n := strings.ToLower(h.Name())
		wr.headers[n] = append(wr.headers[n], h.Value())
	}
	w.mu.Lock()
	w.reqs = append(w.reqs, wr)
	m := w.modify
	w.mu.Unlock()
	if m != nil {
		m(req, res)
	}
}

func (w *wire) all(method string) []wireReq {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []wireReq
	for _, r := range w.reqs {
		if r.method == method {
			out = append(out, r)
		}
	}
	return out
}

// TestOutboundContactStable: with RFC 5626 outbound on (the default), the
// REGISTER carries +sip.instance, reg-id, ;ob and Supported: outbound; the
// Contact stays the same when the flow dies and the trunk re-registers on a
// new connection, so the registrar keeps ONE binding; Binding() reads it
// (Path and Service-Route from the 200).
func TestOutboundContactStable(t *testing.T) {
	t.Parallel()
	w := &wire{modify: func(req *sipmsg.Request, res *sipmsg.Response) {
		if req.Method == sipmsg.REGISTER && res.StatusCode == 200 {
			res.AppendHeader(sipmsg.NewHeader("Path", "<sip:edge1.test;lr>, <sip:edge2.test;lr;ob>"))
			res.AppendHeader(sipmsg.NewHeader("Service-Route", "<sip:sr.test;lr>"))
			res.AppendHeader(sipmsg.NewHeader("Require", "outbound"))
		}
	}}
	reg := newRegistrar(t, registrar.Config{MinExpires: -1, ModifyResponse: w.see})
	ua := newTestUA(t)
	ch := &changes{}
	tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{reg.URI()}, AOR: "sip:alice@relink.test",
		KeepAlive: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond, OnStateChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	b1, ok := tr.Binding()
	if !ok {
		t.Fatal("Registered without a Binding")
	}
	if !strings.HasPrefix(b1.InstanceID, "urn:uuid:") || b1.InstanceID != ua.InstanceID() || b1.RegID != 1 ||
		!strings.Contains(b1.Contact, ";ob") || b1.Registrar != reg.URI() || !b1.Outbound {
		t.Errorf("binding %+v", b1)
	}
	if want := []string{"<sip:edge1.test;lr>", "<sip:edge2.test;lr;ob>"}; !slices.Equal(b1.Path, want) ||
		!slices.Equal(b1.ServiceRoute, []string{"<sip:sr.test;lr>"}) {
		t.Errorf("Path %q, Service-Route %q", b1.Path, b1.ServiceRoute)
	}
	if b1.Expires != DefaultExpires || time.Since(b1.At) > 5*time.Second {
		t.Errorf("granted %v at %v", b1.Expires, b1.At)
	}
	r1 := w.all("REGISTER")[0]
	c := r1.headers["contact"][0]
	if !strings.Contains(c, `+sip.instance="<`+ua.InstanceID()+`>"`) || !strings.Contains(c, "reg-id=1") ||
		!strings.Contains(c, ";ob>") {
		t.Errorf("Contact %q: want +sip.instance, reg-id=1 and ;ob", c)
	}
	if s := r1.headers["supported"]; len(s) != 1 || !strings.Contains(s[0], "outbound") {
		t.Errorf("Supported %q, want outbound", s)
	}

	reg.CloseConnections() // the flow dies; the trunk registers on a new connection
	waitState(t, tr, Registering, 3*time.Second)
	waitState(t, tr, Registered, 5*time.Second)
	b2, _ := tr.Binding()
	regs := w.all("REGISTER")
	last := regs[len(regs)-1]
	if last.source == r1.source {
		t.Fatalf("re-registered from %s again: no reconnect", last.source)
	}
	if b2.Contact != b1.Contact || last.headers["contact"][0] != c {
		t.Errorf("Contact %q then %q (on the wire %q then %q): want it kept across the reconnect",
			b1.Contact, b2.Contact, c, last.headers["contact"][0])
	}
	if bs := reg.Bindings("sip:alice@relink.test"); len(bs) != 1 {
		t.Errorf("registrar holds %d bindings, want 1: %+v", len(bs), bs)
	}
	if !b2.At.After(b1.At) {
		t.Errorf("binding granted at %v then %v", b1.At, b2.At)
	}
}

// TestOutboundOff: RegID < 0 sends none of RFC 5626's parameters, and the
// Contact follows the connection (the old one removed in the same REGISTER).
func TestOutboundOff(t *testing.T) {
	t.Parallel()
	w := &wire{}
	reg := newRegistrar(t, registrar.Config{MinExpires: -1, ModifyResponse: w.see})
	tr, _ := trunkOn(t, TrunkConfig{RegID: -1,
		KeepAlive: 200 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond}, reg.URI())
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	b1, _ := tr.Binding()
	reg.CloseConnections()
	waitState(t, tr, Registering, 3*time.Second)
	waitState(t, tr, Registered, 5*time.Second)
	b2, _ := tr.Binding()
	for _, r := range w.all("REGISTER") {
		if c := strings.Join(r.headers["contact"], ", "); strings.Contains(c, "instance") ||
			strings.Contains(c, "reg-id") || strings.Contains(c, ";ob") || r.headers["supported"] != nil {
			t.Errorf("outbound off, REGISTER has Contact %q, Supported %q", c, r.headers["supported"])
		}
	}
	if b1.Contact == b2.Contact || b2.InstanceID != "" || b2.RegID != 0 || b2.Outbound {
		t.Errorf("bindings %+v then %+v: want the Contact of the new connection, no instance", b1, b2)
	}
	if bs := reg.Bindings("sip:alice@relink.test"); len(bs) != 1 {
		t.Errorf("registrar holds %d bindings, want 1 (the old one removed)", len(bs))
	}
}

// TestHeadersAndRouteOnWire: with an OutboundProxy, every REGISTER and
// OPTIONS goes to the proxy's address with a loose Route to it, the
// Request-URI stays the registrar's, and the configured Headers are on each.
func TestHeadersAndRouteOnWire(t *testing.T) {
	t.Parallel()
	w := &wire{}
	proxy := newRegistrar(t, registrar.Config{MinExpires: -1, ModifyResponse: w.see}) // answers as the registrar would
	tr, _ := trunkOn(t, TrunkConfig{OutboundProxy: proxy.URI(), Qualify: 200 * time.Millisecond,
		Headers: []sipmsg.Header{sipmsg.NewHeader("User-Agent", "relink-test/1"), sipmsg.NewHeader("X-Tenant", "42")},
	}, "sip:registrar.invalid;transport=tcp")
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	eventually(t, 3*time.Second, "an OPTIONS qualify", func() bool { return len(w.all("OPTIONS")) >= 1 })
	wantRoute := "<" + strings.TrimSuffix(proxy.URI(), ";transport=tcp") + ";transport=tcp;lr>"
	for _, m := range []string{"REGISTER", "OPTIONS"} {
		for _, r := range w.all(m) {
			if !strings.HasPrefix(r.ruri, "sip:registrar.invalid") {
				t.Errorf("%s Request-URI %q, want the registrar's", m, r.ruri)
			}
			if got := r.headers["route"]; len(got) != 1 || got[0] != wantRoute {
				t.Errorf("%s Route %q, want %q", m, got, wantRoute)
			}
			if ua, x := r.headers["user-agent"], r.headers["x-tenant"]; len(ua) != 1 || ua[0] != "relink-test/1" ||
				len(x) != 1 || x[0] != "42" {
				t.Errorf("%s User-Agent %q, X-Tenant %q", m, ua, x)
			}
		}
	}
}

// TestInstanceID: a UA's instance is a random version-4 urn:uuid, stable for
// the UA, different per UA; a configured one is checked.
func TestInstanceID(t *testing.T) {
	t.Parallel()
	a, b := newTestUA(t), newTestUA(t)
	id := a.InstanceID()
	if again := a.InstanceID(); again != id || id == b.InstanceID() {
		t.Errorf("instances %q, %q, %q", id, again, b.InstanceID())
	}
	if len(id) != len("urn:uuid:")+36 || !strings.HasPrefix(id, "urn:uuid:") || id[len("urn:uuid:")+14] != '4' {
		t.Errorf("instance %q: want a version-4 urn:uuid", id)
	}
	for in, ok := range map[string]bool{
		"urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF": true,
		"urn:x:y":                         true,
		"uuid:1234":                       false,
		`urn:uuid:"quoted"`:               false,
		"urn:uuid:a b":                    false,
		"urn:uuid:<x>":                    false,
		"urn:" + strings.Repeat("a", 300): false,
	} {
		got, err := newInstanceID(in)
		if ok != (err == nil) || (ok && got != in) {
			t.Errorf("newInstanceID(%q) = %q, %v", in, got, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("newInstanceID(%q): %v, want ErrInvalidConfig", in, err)
		}
	}
}

// TestUAConfigInstanceID: NewUA keeps a configured InstanceID (so a restarted
// gateway replaces its own bindings) and refuses one that is not a URN.
func TestUAConfigInstanceID(t *testing.T) {
	t.Parallel()
	const id = "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"
	ua, err := NewUA(UAConfig{InstanceID: id})
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	if got := ua.InstanceID(); got != id {
		t.Errorf("InstanceID() = %q, want the configured %q", got, id)
	}
	if bad, err := NewUA(UAConfig{InstanceID: "not a urn"}); !errors.Is(err, ErrInvalidConfig) {
		if bad != nil {
			bad.Close()
		}
		t.Errorf("NewUA with InstanceID %q: %v, want ErrInvalidConfig", "not a urn", err)
	}
}
