package sip

// RFC 5626 (SIP outbound) on the registration side: the UA's instance ID,
// the Contact parameters of a binding (+sip.instance, reg-id, ;ob) and the
// Contact kept for the trunk's life.

import (
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"

	sipmsg "github.com/emiago/sipgo/sip"
)

// newInstanceID returns configured, checked, or a fresh
// "urn:uuid:<random version 4 UUID>" when it is empty (RFC 5626 §4.1).
func newInstanceID(configured string) (string, error) {
	if configured != "" {
		if !validInstanceID(configured) {
			return "", fmt.Errorf("%w: InstanceID %q: not a URN (urn:uuid:...)", ErrInvalidConfig, configured)
		}
		return configured, nil
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("urn:uuid:%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// validInstanceID accepts a URN made of printable characters that need no
// escaping inside the quoted +sip.instance parameter.
func validInstanceID(s string) bool {
	if len(s) < len("urn:x:y") || len(s) > 256 || !strings.HasPrefix(strings.ToLower(s), "urn:") {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune(`"<>\`, c) {
			return false
		}
	}
	return true
}

// InstanceID returns the UA's RFC 5626 +sip.instance: UAConfig.InstanceID,
// or the URN made for this UA, stable for its life. Every trunk of the UA
// registers with it (unless its RegID is negative), so that a registrar
// replaces the UA's own bindings instead of adding one per connection.
func (u *UA) InstanceID() string { return u.instance }

// outboundOn reports whether the trunk registers with RFC 5626 outbound.
func (t *Trunk) outboundOn() bool { return t.cfg.regID > 0 }

// addOutbound adds to the REGISTER's Contact and headers what RFC 5626
// §4.2 asks of a UA that registers a flow: +sip.instance and reg-id on the
// Contact, ;ob in its URI, and Supported: outbound (with path, RFC 3327, so
// that an edge proxy may add a Path the 200 OK returns).
func (t *Trunk) addOutbound(req *sipmsg.Request, ch *sipmsg.ContactHeader, tg *regTarget) {
	if !t.outboundOn() {
		return
	}
	if ch.Params == nil {
		ch.Params = sipmsg.NewParams()
	}
	ch.Params.Add("+sip.instance", `"<`+t.instance+`>"`)
	ch.Params.Add("reg-id", strconv.Itoa(t.cfg.regID+tg.index))
	req.AppendHeader(sipmsg.NewHeader("Supported", "outbound, path"))
}

// withOb returns u with the RFC 5626 ob URI parameter (a copy).
func withOb(u *sipmsg.Uri) *sipmsg.Uri {
	c := u.Clone()
	if c.UriParams == nil {
		c.UriParams = sipmsg.NewParams()
	}
	if !c.UriParams.Has("ob") {
		c.UriParams.Add("ob", "")
	}
	return c
}
