package sip

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
)

// clientTx is what the runner needs of a sipgo client transaction
// (*sipmsg.ClientTx); tests give the runner their own.
type clientTx interface {
	Responses() <-chan *sipmsg.Response
	Done() <-chan struct{}
	Err() error
	Terminate()
	Connection() sipmsg.Connection
}

// requestFunc starts a client transaction: the sipgo transaction layer's
// Request, or a test double. It is the runner's only path to the network
// once the Contact is known.
type requestFunc func(ctx context.Context, req *sipmsg.Request) (clientTx, error)

// flowConn is a connection the flow monitor can watch.
type flowConn = sipmsg.Connection

// exchange sends REGISTERs to tg until a final outcome, following decide:
// it answers challenges, 423 and 3xx. expires 0 unregisters. Each
// transaction is admitted by the registrar's gate and its outcome reported
// to it: the gate paces REGISTERs, which is what a registrar's capacity
// counts, so an attempt that needs a challenge round trip takes two
// admissions. With refresh, admission has priority and ends early if the
// flow holding the binding dies.
func (r *runner) exchange(ctx context.Context, tg *regTarget, expires time.Duration, refresh bool) result {
	x := exchange{registrar: tg.raw, expires: expires, transport: tg.transport, host: tg.uri.Host,
		authAnywhere: r.t.cfg.RedirectCredentials}
	x.foreign = tg.redirect != nil && !strings.EqualFold(tg.redirect.Host, tg.uri.Host)
	for {
		if err := context.Cause(ctx); err != nil {
			return result{act: stopped, err: err}
		}
		permit, err := r.admit(ctx, tg.gate, refresh)
		if err != nil {
			return r.admitFailed(ctx, tg, err)
		}
		rep, f := r.send(ctx, tg, x.expires)
		var d decision
		x, d = decide(x, rep)
		r.apply(ctx, tg, x, d, f)
		if d.abandon {
			permit.Abandon()
		} else {
			permit.Done(d.outcome)
		}
		if d.act.final() {
			return result{act: d.act, err: d.err, granted: d.granted, retryAfter: d.retryAfter}
		}
	}
}

// apply carries a decision out on the registrar's state and the flow the
// transaction went out on.
func (r *runner) apply(ctx context.Context, tg *regTarget, x exchange, d decision, f *flow) {
	if d.resetAuth {
		tg.auth.reset()
	}
	if d.noRedirect {
		tg.redirect = nil
	}
	switch d.act {
	case resendAuth:
		tg.auth.set(d.chal, d.proxy)
	case resendExpires:
		tg.expires = x.expires
		r.t.log.LogAttrs(ctx, slog.LevelDebug, "sip interval too brief",
			slog.String("registrar", tg.raw), slog.Duration("expires", x.expires))
	case resendRedirect:
		tg.redirect = d.redirect
	}
	bind := d.act == registered && d.granted > 0
	if d.act == registered {
		if d.flowTimer > 0 {
			tg.flowTimer = d.flowTimer
		}
		tg.grant = d.granted
		tg.bound = d.contact // nil: unregistered
		tg.path, tg.svcRoute, tg.obOK = d.path, d.svcRoute, d.outbound
		tg.held = time.Time{}
		if x.expires != 0 {
			tg.held = time.Now().Add(d.granted)
		}
	}
	r.endWatch(f, bind)
	if bind && f != nil {
		f.add(r.t, r.t.pref(tg)) // a Flow-Timer may shorten the interval
	}
}

// admit waits for the gate's permit. A refresh waits with priority, and its
// wait ends with ErrFlowDead if the flow holding the binding dies meanwhile,
// or ErrBindingExpired when the binding ends first (a gate paused by a long
// Retry-After): a trunk never reports Registered past its binding's end.
func (r *runner) admit(ctx context.Context, gate *backoff.Gate, refresh bool) (*backoff.Permit, error) {
	if !refresh {
		return gate.Acquire(ctx)
	}
	bctx, bcancel := context.WithDeadlineCause(ctx, r.until, ErrBindingExpired)
	defer bcancel()
	p, err := r.admitRefresh(bctx, gate)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(bctx), ErrBindingExpired) {
		return nil, ErrBindingExpired
	}
	return p, err
}

// admitRefresh waits for a refresh's permit with priority, or until the
// flow holding the binding dies (ErrFlowDead) or ctx ends.
func (r *runner) admitRefresh(ctx context.Context, gate *backoff.Gate) (*backoff.Permit, error) {
	r.absorb(ctx)
	if err := r.boundErr; err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancelCause(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-r.t.deaths.ready:
			cancel(errDeathQueued)
		case <-actx.Done():
		}
	}()
	p, err := gate.AcquirePriority(actx)
	cancel(nil)
	<-watched
	r.absorb(ctx)
	if r.boundErr != nil {
		if p != nil {
			p.Abandon()
		}
		return nil, r.boundErr
	}
	if err != nil {
		if p != nil {
			p.Abandon()
		}
		if ctx.Err() == nil && errors.Is(context.Cause(actx), errDeathQueued) {
			// A death of a flow that is not ours: wait again.
			return r.admitRefresh(ctx, gate)
		}
		return nil, err
	}
	return p, nil
}

// laterTime returns the later of a and b.
func laterTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

var errDeathQueued = errors.New("sip: flow death queued")

// send sends one REGISTER of an exchange and returns its reply, and the
// flow it went out on (watched; apply ends the watch).
func (r *runner) send(ctx context.Context, tg *regTarget, expires time.Duration) (reply, *flow) {
	t := r.t
	req, contact, network, err := t.newRegister(ctx, tg, expires)
	if err != nil {
		return reply{err: err, stopped: ctx.Err() != nil}, nil
	}
	rep := reply{contact: contact, sentCreds: tg.auth.chal != nil}
	prev := tg.held
	if expires != 0 {
		// From here the registrar may bind, unless it answers otherwise.
		life := expires
		if life < 0 {
			life = MaxExpires
		}
		tg.held = laterTime(tg.held, time.Now().Add(life))
	}
	var f *flow
	rep.resp, f, rep.err = r.transact(ctx, tg, req, network, t.cfg.RequestTimeout)
	if rep.resp != nil && rep.resp.StatusCode >= 300 {
		tg.held = prev // refused: this REGISTER bound nothing
	}
	rep.stopped = rep.resp == nil && ctx.Err() != nil
	if rep.stopped {
		rep.err = context.Cause(ctx)
	}
	return rep, f
}

// transact sends one request and waits for its final response, at most
// timeout (zero or negative: sipgo's own timers only). The flow the request
// went out on is watched (and returned, still subscribed: the caller ends
// the watch with endWatch) so that its death ends the wait at once: no
// request waits on a connection nobody watches.
func (r *runner) transact(ctx context.Context, tg *regTarget, req *sipmsg.Request, network string, timeout time.Duration) (*sipmsg.Response, *flow, error) {
	t := r.t
	tctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		tctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	start := time.Now()
	isReg := req.Method == sipmsg.REGISTER
	if isReg {
		t.txCount.Add(1)
	}
	tx, err := t.request(tctx, req)
	if err != nil {
		return nil, nil, t.txError(ctx, tctx, tg, err, isReg)
	}
	defer tx.Terminate()
	remote := req.Destination()
	if network == "udp" && tx.Connection() != nil {
		remote = t.udpRemote(tctx, remote)
	}
	// Attaching sets socket options at most: nothing to cancel.
	f := r.watch(tx.Connection(), network, remote, tg) //nolint:contextcheck // no blocking I/O

	for {
		if f != nil && r.pendErr != nil {
			return nil, f, t.txError(ctx, tctx, tg, r.pendErr, isReg)
		}
		select {
		case res := <-tx.Responses():
			if res.IsProvisional() {
				continue
			}
			if isReg {
				t.recordResponse(ctx, tg, req, res, time.Since(start))
			}
			return res, f, nil
		case <-tx.Done():
			err := tx.Err()
			if f != nil {
				// sipgo fails the transaction when relink closes a dead
				// flow: report the flow's death, not the close.
				if ferr := f.deadErr(); ferr != nil {
					err = ferr
				}
			}
			return nil, f, t.txError(ctx, tctx, tg, err, isReg)
		case <-tctx.Done():
			return nil, f, t.txError(ctx, tctx, tg, tctx.Err(), isReg)
		case <-t.deaths.ready:
			r.absorb(ctx) // the top of the loop looks
		}
	}
}

func (t *Trunk) recordResponse(ctx context.Context, tg *regTarget, req *sipmsg.Request, res *sipmsg.Response, rtt time.Duration) {
	t.inst.duration.Record(ctx, rtt.Seconds(), tg.attrs.server)
	if c := res.StatusCode / 100; c >= 1 && c <= 6 {
		t.inst.responses.Add(ctx, 1, tg.attrs.class[c-1])
	}
	if t.log.Enabled(ctx, slog.LevelDebug) {
		t.log.LogAttrs(ctx, slog.LevelDebug, "sip response",
			slog.String("registrar", tg.raw), slog.Int("status", res.StatusCode),
			slog.Uint64("cseq", uint64(req.CSeq().SeqNo)))
	}
}

func (t *Trunk) txError(ctx, tctx context.Context, tg *regTarget, err error, isReg bool) error {
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case tctx.Err() != nil || errors.Is(err, sipmsg.ErrTransactionTimeout):
		err = &timeoutError{err: ErrTimeout}
		if isReg {
			t.inst.responses.Add(ctx, 1, tg.attrs.class[classTimeout])
		}
	default:
		if isReg {
			t.inst.responses.Add(ctx, 1, tg.attrs.transportError(err))
		}
	}
	if isReg {
		t.log.LogAttrs(ctx, slog.LevelDebug, "sip request failed",
			slog.String("registrar", tg.raw), slog.String("error", err.Error()))
	}
	return err
}

// newRegister builds the next REGISTER to tg (CSeq counting up, same
// Call-ID), with credentials if a challenge is kept, and returns the Contact
// it registers and the transport it goes over.
func (t *Trunk) newRegister(ctx context.Context, tg *regTarget, expires time.Duration) (*sipmsg.Request, *sipmsg.Uri, string, error) {
	ruri, network, dest := t.route(tg)
	req := sipmsg.NewRequest(sipmsg.REGISTER, ruri)
	t.addCommon(req, tg, network, dest)
	from := &sipmsg.FromHeader{Address: t.cfg.aor, Params: sipmsg.NewParams()}
	from.Params.Add("tag", tg.fromTag)
	req.AppendHeader(from)
	req.AppendHeader(&sipmsg.ToHeader{Address: t.cfg.aor})
	callID := sipmsg.CallIDHeader(tg.callID)
	req.AppendHeader(&callID)
	tg.cseq++
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: tg.cseq, MethodName: sipmsg.REGISTER})
	mf := sipmsg.MaxForwardsHeader(70)
	req.AppendHeader(&mf)

	contact, err := t.contactFor(ctx, tg, req, network)
	if err != nil {
		return nil, nil, network, err
	}
	t.appendContacts(req, tg, contact, expires)
	if expires >= 0 {
		exp := sipmsg.ExpiresHeader(uint32(expires / time.Second))
		req.AppendHeader(&exp)
	}
	if h := tg.auth.header("REGISTER", ruri.String(), t.cfg.username, t.cfg.Password); h != nil {
		req.AppendHeader(h)
	}
	t.addExtra(req)
	req.SetBody(nil)
	return req, contact, network, nil
}

// route returns where a request to tg goes: its Request-URI (the 3xx
// target if any, else the registrar's URI), the transport, and the address
// to send it to ("" lets sipgo resolve the Request-URI's host): the
// outbound proxy's, else the address an RFC 3263 lookup gave tg.
func (t *Trunk) route(tg *regTarget) (ruri sipmsg.Uri, network, dest string) {
	ruri, network = tg.requestURI()
	switch {
	case t.cfg.proxy != nil:
		p := t.cfg.proxy
		return ruri, p.transport, strings.TrimPrefix(p.key, p.transport+"/")
	case tg.redirect == nil:
		dest = tg.dest
	}
	return ruri, network, dest
}

// addCommon adds the Via (and the Route to the outbound proxy) and sets the
// transport and destination of a request to tg.
func (t *Trunk) addCommon(req *sipmsg.Request, _ *regTarget, network, dest string) {
	upper := sipmsg.NetworkToUpper(network)
	req.SetTransport(upper)
	if dest != "" {
		req.SetDestination(dest)
	}
	via := &sipmsg.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: upper,
		Params: sipmsg.NewParams()}
	via.Params.Add("branch", sipmsg.GenerateBranch())
	req.AppendHeader(via)
	if p := t.cfg.proxy; p != nil {
		req.AppendHeader(&sipmsg.RouteHeader{Address: p.uri})
	}
}

// addExtra adds TrunkConfig.Headers (checked by NewTrunk).
func (t *Trunk) addExtra(req *sipmsg.Request) {
	for _, h := range t.cfg.Headers {
		req.AppendHeader(sipmsg.NewHeader(h.Name(), h.Value()))
	}
}

// appendContacts adds the Contact to register (expires=0 to unregister),
// with RFC 5626's parameters, and, when the Contact changed, the old one
// with expires=0.
func (t *Trunk) appendContacts(req *sipmsg.Request, tg *regTarget, contact *sipmsg.Uri, expires time.Duration) {
	ch := &sipmsg.ContactHeader{Address: *contact}
	if expires == 0 {
		ch.Params = sipmsg.NewParams()
		ch.Params.Add("expires", "0")
	}
	t.addOutbound(req, ch, tg)
	req.AppendHeader(ch)
	if tg.bound != nil && !sameContact(tg.bound, contact) {
		// A new connection means a new default Contact (outbound off):
		// remove the binding of the old one in the same request, rather
		// than leave it to expire (the registrar would route calls to a
		// dead flow).
		old := &sipmsg.ContactHeader{Address: *tg.bound, Params: sipmsg.NewParams()}
		old.Params.Add("expires", "0")
		req.AppendHeader(old)
	}
}

// contactFor returns the Contact to register: the configured one, or one
// built from the local address of the connection the request will use.
// With RFC 5626 outbound, the Contact built first for a transport is kept
// for the trunk's life, so that it stays the same across reconnects (the
// registrar reaches the trunk through the flow, not through the Contact's
// address), and carries ;ob.
func (t *Trunk) contactFor(ctx context.Context, tg *regTarget, req *sipmsg.Request, network string) (*sipmsg.Uri, error) {
	if t.cfg.contact != nil {
		if t.outboundOn() {
			return withOb(t.cfg.contact), nil
		}
		return t.cfg.contact, nil
	}
	if c := t.contacts[network]; c != nil && t.outboundOn() {
		return c, nil
	}
	u, err := t.localContact(ctx, tg, req, network)
	if err != nil {
		return nil, err
	}
	if t.outboundOn() {
		u = withOb(u)
		if t.contacts == nil {
			t.contacts = make(map[string]*sipmsg.Uri)
		}
		t.contacts[network] = u
	}
	return u, nil
}

// localContact builds "sip:USER@LOCALADDR;transport=T" from the local
// address of the connection req will use.
func (t *Trunk) localContact(ctx context.Context, tg *regTarget, req *sipmsg.Request, network string) (*sipmsg.Uri, error) {
	tctx, cancel := ctx, context.CancelFunc(func() {})
	if t.cfg.RequestTimeout > 0 {
		tctx, cancel = context.WithTimeout(ctx, t.cfg.RequestTimeout)
	}
	defer cancel()
	c, err := t.mon.connect(tctx, req, t.cfg.TLSConfig)
	if err != nil {
		return nil, err
	}
	la := c.LocalAddr()
	c.TryClose() // ClientRequestConnection took a reference
	host, port, err := net.SplitHostPort(la.String())
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		// An unconnected UDP socket: ask the routing table which address
		// reaches the registrar (no packet is sent).
		if ip := tg.outboundIP(req.Destination()); ip != nil {
			host = ip.String()
		}
	}
	p, _ := strconv.Atoi(port)
	u := &sipmsg.Uri{Scheme: "sip", User: t.cfg.aor.User, Host: host, Port: p}
	if network != "udp" {
		u.UriParams = sipmsg.HeaderParams{{K: "transport", V: network}}
	}
	return u, nil
}

// udpRemote returns dest (host:port) with its host resolved to an address,
// once per destination for the trunk's life: a UDP flow is keyed by the
// address, and a DNS query per transaction would cost more than the
// transaction. "" when it does not resolve (tried again next time).
func (t *Trunk) udpRemote(ctx context.Context, dest string) string {
	if a, ok := t.udpAddrs[dest]; ok {
		return a
	}
	host, port, err := net.SplitHostPort(dest)
	if err != nil {
		return ""
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		res := t.cfg.Resolver
		if res == nil {
			res = net.DefaultResolver
		}
		ips, err := res.LookupNetIP(ctx, "ip", host)
		if err != nil || len(ips) == 0 {
			return "" // not kept: the next transaction tries again
		}
		ip = ips[0]
	}
	a := net.JoinHostPort(ip.Unmap().String(), port)
	if t.udpAddrs == nil {
		t.udpAddrs = make(map[string]string)
	}
	t.udpAddrs[dest] = a
	return a
}

// outboundIP returns (and caches) the local address that routes to dest.
func (tg *regTarget) outboundIP(dest string) net.IP {
	if tg.localIP == nil {
		if uc, err := net.Dial("udp", dest); err == nil {
			if a, ok := uc.LocalAddr().(*net.UDPAddr); ok {
				tg.localIP = a.IP
			}
			uc.Close()
		}
	}
	return tg.localIP
}
