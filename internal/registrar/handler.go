package registrar

import (
	"context"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// enter registers a handler in progress; it returns false after Close.
func (r *Registrar) enter() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.handlerWG.Add(1)
	return true
}

func newEvent(now time.Time, req *sipmsg.Request) Event {
	ev := Event{
		Time:      now,
		Method:    req.Method.String(),
		Transport: req.Transport(),
		Source:    req.Source(),
		Expires:   -1,
	}
	if to := req.To(); to != nil {
		ev.AoR = uriKey(&to.Address)
	}
	if id := req.CallID(); id != nil {
		ev.CallID = id.Value()
	}
	if cs := req.CSeq(); cs != nil {
		ev.CSeq = cs.SeqNo
	}
	return ev
}

func (r *Registrar) handleRegister(req *sipmsg.Request, tx sipmsg.ServerTransaction) {
	if !r.enter() {
		return
	}
	defer r.handlerWG.Done()
	now := r.now()
	ev := newEvent(now, req)
	res := r.register(now, req, &ev)
	if cb := r.cfg.OnRequest; cb != nil {
		cb(ev)
	}
	if res != nil {
		r.send(req, tx, res)
	}
}

func (r *Registrar) handleOptions(req *sipmsg.Request, tx sipmsg.ServerTransaction) {
	if !r.enter() {
		return
	}
	defer r.handlerWG.Done()
	now := r.now()
	ev := newEvent(now, req)
	var res *sipmsg.Response
	r.mu.Lock()
	r.stats.options++
	switch f := r.takeFaultLocked(ev.AoR); {
	case r.silent.Load():
		r.stats.dropped++
	case f != nil:
		res = faultResponse(req, f)
	default:
		res = sipmsg.NewResponseFromRequest(req, sipmsg.StatusOK, "OK", nil)
		res.AppendHeader(sipmsg.NewHeader("Allow", "REGISTER, OPTIONS"))
	}
	r.mu.Unlock()
	if res != nil {
		ev.Status = res.StatusCode
	}
	if cb := r.cfg.OnRequest; cb != nil {
		cb(ev)
	}
	if res != nil {
		r.send(req, tx, res)
	}
}

func (r *Registrar) handleOther(req *sipmsg.Request, tx sipmsg.ServerTransaction) {
	if req.IsAck() || !r.enter() {
		return
	}
	defer r.handlerWG.Done()
	r.mu.Lock()
	f := r.takeFaultLocked("")
	silent := r.silent.Load()
	if silent {
		r.stats.dropped++
	}
	r.mu.Unlock()
	switch {
	case silent:
	case f != nil:
		r.send(req, tx, faultResponse(req, f))
	default:
		r.send(req, tx, sipmsg.NewResponseFromRequest(req, sipmsg.StatusMethodNotAllowed, "Method Not Allowed", nil))
	}
}

func (r *Registrar) send(req *sipmsg.Request, tx sipmsg.ServerTransaction, res *sipmsg.Response) {
	if m := r.cfg.ModifyResponse; m != nil {
		m(req, res)
	}
	if err := tx.Respond(res); err != nil {
		r.log.LogAttrs(context.Background(), slog.LevelDebug, "registrar: respond failed",
			slog.Int("status", res.StatusCode), slog.String("error", err.Error()))
	}
}

// register decides the answer to a REGISTER (nil: drop it) and updates
// bindings and counters.
func (r *Registrar) register(now time.Time, req *sipmsg.Request, ev *Event) *sipmsg.Response {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.registers++
	r.cur.Registers++
	a := r.aors[ev.AoR]
	if a == nil {
		a = &aorState{bindings: make(map[string]*binding)}
		r.aors[ev.AoR] = a
	}
	a.requests++
	hist := r.cfg.history()
	if ev.CallID != "" && !containsString(a.callIDs, ev.CallID) {
		a.callIDs = append(a.callIDs, ev.CallID)
	}
	a.cseqs = appendBounded(a.cseqs, ev.CSeq, hist)
	if ev.CallID == a.lastCallID && a.requests > 1 && ev.CSeq <= a.lastCSeq {
		a.outOfOrder++
		r.stats.outOfOrder++
	}
	a.lastCallID, a.lastCSeq = ev.CallID, ev.CSeq

	finish := func(res *sipmsg.Response) *sipmsg.Response {
		ev.Status = res.StatusCode
		r.countLocked(res.StatusCode)
		a.statuses = appendBounded(a.statuses, res.StatusCode, hist)
		return res
	}

	if r.silent.Load() {
		r.stats.dropped++
		r.cur.Other++
		return nil
	}
	if f := r.takeFaultLocked(ev.AoR); f != nil {
		return finish(faultResponse(req, f))
	}
	if !r.admitLocked(now) {
		r.stats.shed++
		res := sipmsg.NewResponseFromRequest(req, sipmsg.StatusServiceUnavailable, "Service Unavailable", nil)
		if ra := r.cfg.retryAfter(); ra >= 0 {
			res.AppendHeader(sipmsg.NewHeader("Retry-After", strconv.Itoa(ra)))
		}
		return finish(res)
	}
	if r.cfg.authEnabled() {
		if res := r.authenticateLocked(now, req, ev, a); res != nil {
			return finish(res)
		}
	}
	return finish(r.bindLocked(now, req, ev, a))
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// authenticateLocked checks digest credentials; it returns the response
// when they are missing or not accepted, nil when they are.
func (r *Registrar) authenticateLocked(now time.Time, req *sipmsg.Request, ev *Event, a *aorState) *sipmsg.Response {
	authHeader, challengeName, challengeCode, challengeReason := "Authorization", "WWW-Authenticate", 401, "Unauthorized"
	if r.cfg.ProxyAuth {
		authHeader, challengeName, challengeCode, challengeReason = "Proxy-Authorization", "Proxy-Authenticate", 407, "Proxy Authentication Required"
	}
	challenge := func(stale bool) *sipmsg.Response {
		res := sipmsg.NewResponseFromRequest(req, challengeCode, challengeReason, nil)
		res.AppendHeader(sipmsg.NewHeader(challengeName, r.challengeHeader(r.newNonce(now), stale)))
		if stale {
			r.stats.stale++
			ev.Stale = true
		}
		return res
	}

	var cred credentials
	found := false
	for _, h := range req.GetHeaders(authHeader) {
		c, err := parseCredentials(h.Value())
		if err != nil {
			return sipmsg.NewResponseFromRequest(req, sipmsg.StatusBadRequest, "Bad Request", nil)
		}
		if c.realm == r.cfg.realm() {
			cred, found = c, true
			break
		}
	}
	if !found {
		return challenge(false)
	}
	ev.Username, ev.Nonce, ev.NC = cred.username, cred.nonce, cred.nc
	if cred.nc > 0 {
		a.ncs = appendBounded(a.ncs, cred.nc, r.cfg.history())
	}
	if alg := strings.ToUpper(cred.algorithm); alg != "" && alg != "MD5" {
		return challenge(false)
	}
	issued, ours := r.nonceIssued(cred.nonce)
	if !ours {
		return challenge(false)
	}
	pw, known := r.cfg.password(cred.username)
	if !known || expectedResponse(&cred, req.Method.String(), pw) != cred.response {
		if code := r.cfg.badCredentialsStatus(); code != challengeCode {
			return sipmsg.NewResponseFromRequest(req, code, reasonPhrase(code), nil)
		}
		return challenge(false)
	}
	if lt := r.cfg.nonceLifetime(); lt > 0 && now.Sub(issued) > lt {
		return challenge(true)
	}
	if cred.qop != "" {
		ns := r.nonces[cred.nonce]
		if ns == nil {
			ns = &nonceState{issued: issued}
			r.nonces[cred.nonce] = ns
		}
		if cred.nc <= ns.lastNC {
			return challenge(true) // replayed or out-of-order nonce count
		}
		ns.lastNC = cred.nc
		if cred.nc > 1 {
			r.stats.nonceReuse++
		}
	}
	return nil
}

// contactExpires returns the expires parameter of a Contact, if valid.
func contactExpires(c *sipmsg.ContactHeader) (int64, bool) {
	for _, kv := range c.Params {
		if strings.EqualFold(kv.K, "expires") {
			return parseDelta(kv.V)
		}
	}
	return 0, false
}

// parseDelta parses delta-seconds; values beyond 2^32-1 are clamped.
func parseDelta(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	var n int64
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n < math.MaxUint32 {
			n = n*10 + int64(c-'0')
		}
	}
	return min(n, math.MaxUint32), true
}

// bindLocked applies the Contacts of an authenticated REGISTER (RFC 3261
// §10.3 steps 6–8) and builds the answer.
func (r *Registrar) bindLocked(now time.Time, req *sipmsg.Request, ev *Event, a *aorState) *sipmsg.Response {
	headerExpires, hasHeaderExpires := int64(0), false
	if h := req.GetHeader("Expires"); h != nil {
		headerExpires, hasHeaderExpires = parseDelta(h.Value())
	}
	var contacts []*sipmsg.ContactHeader
	for _, h := range req.GetHeaders("Contact") {
		c, ok := h.(*sipmsg.ContactHeader)
		if !ok {
			return sipmsg.NewResponseFromRequest(req, sipmsg.StatusBadRequest, "Bad Contact", nil)
		}
		contacts = append(contacts, c)
	}
	cseq := ev.CSeq
	outOfOrder := func(b *binding) bool { return b.CallID == ev.CallID && cseq <= b.CSeq }

	// Wildcard: remove every binding.
	for _, c := range contacts {
		if !c.Address.Wildcard {
			continue
		}
		if len(contacts) != 1 || !hasHeaderExpires || headerExpires != 0 {
			return sipmsg.NewResponseFromRequest(req, sipmsg.StatusBadRequest, "Bad Wildcard", nil)
		}
		for _, b := range a.bindings {
			if outOfOrder(b) {
				return sipmsg.NewResponseFromRequest(req, sipmsg.StatusInternalServerError, "Out of Order", nil)
			}
		}
		clear(a.bindings)
		ev.Expires = 0
		return r.okLocked(now, req, a)
	}

	type update struct {
		key     string
		c       *sipmsg.ContactHeader
		expires int64
	}
	updates := make([]update, 0, len(contacts))
	minE, maxE := int64(r.cfg.minExpires()), int64(r.cfg.maxExpires())
	for _, c := range contacts {
		e, ok := contactExpires(c)
		if !ok {
			e, ok = headerExpires, hasHeaderExpires
		}
		if !ok {
			e = int64(r.cfg.defaultExpires())
		}
		if e > 0 && e < minE {
			res := sipmsg.NewResponseFromRequest(req, sipmsg.StatusIntervalToBrief, "Interval Too Brief", nil)
			res.AppendHeader(sipmsg.NewHeader("Min-Expires", strconv.FormatInt(minE, 10)))
			return res
		}
		e = min(e, maxE)
		key := c.Address.String()
		if b := a.bindings[key]; b != nil && outOfOrder(b) {
			return sipmsg.NewResponseFromRequest(req, sipmsg.StatusInternalServerError, "Out of Order", nil)
		}
		updates = append(updates, update{key, c, e})
	}
	for i, u := range updates {
		if i == 0 {
			ev.Expires = int(u.expires)
		}
		if u.expires == 0 {
			delete(a.bindings, u.key)
			continue
		}
		a.bindings[u.key] = &binding{
			Binding: Binding{
				Contact:   u.key,
				Expires:   now.Add(time.Duration(u.expires) * time.Second),
				CallID:    ev.CallID,
				CSeq:      cseq,
				Source:    ev.Source,
				Transport: ev.Transport,
			},
			uri: *u.c.Address.Clone(),
		}
	}
	return r.okLocked(now, req, a)
}

// okLocked builds a 200 OK listing the AoR's live bindings with their
// remaining expiry.
func (r *Registrar) okLocked(now time.Time, req *sipmsg.Request, a *aorState) *sipmsg.Response {
	res := sipmsg.NewResponseFromRequest(req, sipmsg.StatusOK, "OK", nil)
	for k, b := range a.bindings {
		left := b.Expires.Sub(now)
		if left <= 0 {
			delete(a.bindings, k)
			continue
		}
		c := &sipmsg.ContactHeader{Address: *b.uri.Clone()}
		c.Params.Add("expires", strconv.Itoa(ceilSeconds(left)))
		res.AppendHeader(c)
	}
	if ft := r.cfg.FlowTimer; ft > 0 {
		res.AppendHeader(sipmsg.NewHeader("Flow-Timer", strconv.Itoa(ceilSeconds(ft))))
	}
	return res
}
