package sip

import (
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// Binding is the registration a Trunk holds, as the registrar's last 2xx
// granted it.
type Binding struct {
	// Registrar is the URI of the registrar holding it (no password), as
	// TrunkStateChange.Destination names it.
	Registrar string
	// Contact is the Contact URI registered. With RFC 5626 outbound on (the
	// default, TrunkConfig.RegID ≥ 0) a Contact relink builds stays the
	// same for the trunk's life, across reconnects: a gateway can map the
	// Request-URI of an inbound request to the trunk by it. A registrar
	// that supports outbound (its 2xx says Require: outbound, or an edge
	// proxy adds a Path with ;ob) sends inbound requests through the flow;
	// one that does not sends them to the Contact's address, which after a
	// reconnect is no longer the connection's: give such a registrar a
	// Contact the gateway listens on (TrunkConfig.Contact), or RegID < 0
	// (the Contact follows the connection). With outbound it carries ;ob:
	// use it as the Contact of the trunk's dialog-forming requests (RFC
	// 5626 §4.3), so that the registrar's edge routes the dialog through
	// the flow.
	Contact string
	// Outbound reports whether the registrar's 2xx said Require: outbound
	// (RFC 5626 §4.2.1: it routes inbound requests through the flow).
	Outbound bool
	// InstanceID and RegID are the RFC 5626 +sip.instance and reg-id sent
	// with it; empty and zero when outbound is off.
	InstanceID string
	RegID      int
	// Expires is the lifetime granted; At is when it was granted (the 2xx
	// arrived), so the binding ends at At.Add(Expires) unless refreshed.
	Expires time.Duration
	At      time.Time
	// Path is the 2xx's Path header values (RFC 3327), in order: the proxies
	// between the trunk and the registrar that requests to the trunk take.
	Path []string
	// ServiceRoute is the 2xx's Service-Route values (RFC 3608), in order:
	// the Route set for requests the trunk sends in the registration's
	// context.
	ServiceRoute []string
}

// Binding returns the binding the trunk holds, and false when it holds none
// (not Registered, or an OptionsOnly trunk).
func (t *Trunk) Binding() (Binding, bool) {
	b := t.binding.Load()
	if b == nil {
		return Binding{}, false
	}
	c := *b
	c.Path = append([]string(nil), b.Path...)
	c.ServiceRoute = append([]string(nil), b.ServiceRoute...)
	return c, true
}

// publishBinding makes tg's binding, just granted for d, the trunk's.
func (t *Trunk) publishBinding(tg *regTarget, d time.Duration) {
	if t.cfg.OptionsOnly || tg.bound == nil {
		t.binding.Store(nil)
		return
	}
	b := &Binding{Registrar: tg.raw, Contact: tg.bound.String(), Expires: d, At: time.Now(),
		Path: tg.path, ServiceRoute: tg.svcRoute, Outbound: tg.obOK}
	if t.outboundOn() {
		b.InstanceID, b.RegID = t.instance, t.cfg.regID+tg.index
	}
	t.binding.Store(b)
}

// headerValues returns the values of every header named name, each
// comma-separated list split (RFC 3261 §7.3.1), for Path and Service-Route.
func headerValues(res *sipmsg.Response, name string) []string {
	var out []string
	for _, h := range res.GetHeaders(name) {
		out = append(out, splitList(h.Value())...)
	}
	return out
}

// splitList splits a header value at the commas that are outside angle
// brackets and quotes, trimming each element; empty elements are dropped.
func splitList(v string) []string {
	var out []string
	depth, quoted, start := 0, false, 0
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"' && (i == 0 || v[i-1] != '\\'):
			quoted = !quoted
		case quoted:
		case c == '<':
			depth++
		case c == '>' && depth > 0:
			depth--
		case c == ',' && depth == 0:
			out = appendTrimmed(out, v[start:i])
			start = i + 1
		}
	}
	return appendTrimmed(out, v[start:])
}

func appendTrimmed(out []string, s string) []string {
	if s = strings.TrimSpace(s); s == "" {
		return out
	}
	return append(out, s)
}
