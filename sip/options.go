package sip

// OPTIONS: the qualify of a registered trunk (UDP by default), and the whole
// liveness of an OptionsOnly trunk (an IP-authenticated carrier that never
// REGISTERs), through the same gates, flows and states as REGISTERs.

import (
	"context"
	"errors"
	"fmt"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/backoff"
)

// optionsTo builds an out-of-dialog OPTIONS to tg: From the AOR (a carrier
// that authenticates by IP may look at it), through the outbound proxy, with
// the configured headers.
func (t *Trunk) optionsTo(tg *regTarget) (*sipmsg.Request, string) {
	ruri, network, dest := t.route(tg)
	req := sipmsg.NewRequest(sipmsg.OPTIONS, ruri)
	t.addCommon(req, tg, network, dest)
	from := &sipmsg.FromHeader{Address: t.cfg.aor, Params: sipmsg.NewParams()}
	from.Params.Add("tag", sipmsg.GenerateTagN(16))
	req.AppendHeader(from)
	to := ruri
	to.UriParams, to.Headers = nil, nil
	req.AppendHeader(&sipmsg.ToHeader{Address: to})
	callID := sipmsg.CallIDHeader(sipmsg.GenerateTagN(24))
	req.AppendHeader(&callID)
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: 1, MethodName: sipmsg.OPTIONS})
	mf := sipmsg.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	t.addExtra(req)
	req.SetBody(nil)
	return req, network
}

// qualify sends an OPTIONS to tg and waits for any answer, at most the
// qualify timeout (TrunkConfig.Qualify's doc). The flow it goes out on is
// watched while it waits.
func (r *runner) qualify(ctx context.Context, tg *regTarget) error {
	req, network := r.t.optionsTo(tg)
	_, f, err := r.transact(ctx, tg, req, network, r.t.cfg.qualifyTO)
	r.endWatch(f, false)
	return err
}

// optionsLease is how long an answered OPTIONS keeps an OptionsOnly trunk
// Registered: its next OPTIONS is due between 94 and 106 % of the interval
// (refreshDelay's 75–85 % of the lease), and a wait for the gate's permit
// longer than a quarter of the interval ends it (ErrBindingExpired).
func optionsLease(interval time.Duration) time.Duration { return interval * 5 / 4 }

// ping is an OptionsOnly trunk's attempt: one OPTIONS admitted by the
// registrar's gate, its outcome reported to it. A refresh (the trunk is
// Registered there) waits for its permit with priority.
func (r *runner) ping(ctx context.Context, tg *regTarget, refresh bool) result {
	if err := context.Cause(ctx); err != nil {
		return result{act: stopped, err: err}
	}
	permit, err := r.admit(ctx, tg.gate, refresh)
	if err != nil {
		return r.admitFailed(ctx, tg, err)
	}
	req, network := r.t.optionsTo(tg)
	var rep reply
	var f *flow
	rep.resp, f, rep.err = r.transact(ctx, tg, req, network, r.t.cfg.qualifyTO)
	rep.stopped = rep.resp == nil && ctx.Err() != nil
	if rep.stopped {
		rep.err = context.Cause(ctx)
	}
	d := decideOptions(tg.raw, rep)
	alive := d.act == registered
	r.endWatch(f, alive)
	if d.abandon {
		permit.Abandon()
	} else {
		permit.Done(d.outcome)
	}
	res := result{act: d.act, err: d.err, retryAfter: d.retryAfter}
	if alive {
		res.granted = optionsLease(r.t.cfg.qualifyFor(&tg.target))
		tg.grant = res.granted
	}
	return res
}

// decideOptions is decide for an OptionsOnly trunk's OPTIONS: any final
// response proves the registrar alive (a 404 or 405 too: something
// answered), except a 503, which pushes the trunk (and, with Retry-After,
// the gate) back as it does a REGISTER; no response is unreachable. It is
// pure.
func decideOptions(registrar string, r reply) decision {
	switch {
	case r.stopped:
		return decision{act: stopped, err: r.err, abandon: true}
	case r.resp == nil && tlsConfigError(r.err):
		d := finalDecision(failed, fmt.Errorf("%w: %s: %w", ErrTLSConfig, registrar, r.err))
		d.noRedirect = true
		return d
	case r.resp == nil:
		return decision{act: unreachable, outcome: backoff.Unreachable, err: r.err, noRedirect: true}
	case r.resp.StatusCode == 503:
		return decideFailure(statusError(exchange{registrar: registrar}, r.resp))
	}
	return finalDecision(registered, nil)
}

// admitFailed is the result of an attempt whose wait for the gate's permit
// failed: the binding's flow died or the binding ended while a refresh
// waited (the trunk is not registered any more), or ctx ended.
func (r *runner) admitFailed(ctx context.Context, tg *regTarget, err error) result {
	if ctx.Err() == nil && (errors.Is(err, ErrFlowDead) || errors.Is(err, ErrBindingExpired)) {
		tg.redirect = nil
		return result{act: unreachable, err: err}
	}
	return result{act: stopped, err: err}
}
