package backoff

import "time"

// Done reports the attempt's outcome and frees its in-flight slot. Only the
// first call counts.
func (p *Permit) Done(o Outcome) {
	if p == nil || p.g == nil {
		return
	}
	g := p.g
	now := time.Now()
	g.mu.Lock()
	if !p.releaseLocked() {
		g.mu.Unlock()
		return
	}
	var ev []GateStateChange
	switch o.kind() {
	case Success:
		g.stats.Succeeded++
		g.lastSuccess = now
		g.pacer.accepted(now, p.stamp)
		g.bucket.clamp(g.pacer.pace)
		ev = g.reachableLocked(now)
	case ClientFailure:
		g.stats.ClientFailures++
		ev = g.reachableLocked(now)
	case kindOverload:
		g.stats.Overloaded++
		ev = g.reachableLocked(now)
		ev = append(ev, g.rejectedLocked(now, o.RetryAfter(), p.stamp)...)
	case Unreachable:
		g.stats.Unreachable++
		if g.stats.Succeeded > p.succSeq {
			// Others got through meanwhile: the destination is alive but
			// not keeping up (or this attempt is a straggler from before
			// the gate last closed, which says nothing).
			ev = g.rejectedLocked(now, 0, p.stamp)
		} else {
			ev = g.unreachableLocked(now)
		}
	}
	g.scoutEndedLocked(p)
	ev = append(ev, g.dispatchLocked(now)...)
	g.mu.Unlock()
	g.emit(ev)
	g.inst.outcome(o)
}

// Observe reports an outcome learned outside an admitted attempt: a
// keepalive that went unanswered on an established flow (Unreachable), a 503
// to a request the gate does not pace (Overload), an answer on a flow the
// gate did not admit (Success). Unreachable closes the gate at once: the
// attempts that would follow would only go into the same black hole; the
// scouts find out when the path is back — unless an attempt succeeded within
// the last ScoutMax (or, for UnreachableSince(t), after t): then the
// destination answers on other paths. Observe does not count in Stats'
// outcome counters, which are for admitted attempts.
func (g *Gate) Observe(o Outcome) {
	if g == nil {
		return
	}
	now := time.Now()
	g.mu.Lock()
	var ev []GateStateChange
	switch o.kind() {
	case Success, ClientFailure:
		ev = g.reachableLocked(now)
	case kindOverload:
		ev = g.reachableLocked(now)
		ev = append(ev, g.rejectedLocked(now, o.RetryAfter(), g.pacer.stamp(now))...)
	case Unreachable:
		since := o.since()
		if since.IsZero() {
			since = now.Add(-g.cfg.ScoutMax)
		} else {
			// The path's last bytes may themselves have completed an
			// attempt (a 200 read just before the silence): only a
			// success clearly later proves another path.
			since = since.Add(time.Second)
		}
		if !g.lastSuccess.After(since) {
			ev = g.unreachableLocked(now)
		}
	}
	ev = append(ev, g.dispatchLocked(now)...)
	g.mu.Unlock()
	g.emit(ev)
}

// Abandon frees the permit's in-flight slot without reporting an outcome: the
// attempt was given up before it told anything about the destination (its
// caller was cancelled mid-dial, say). Calls after Done or Abandon are
// ignored.
func (p *Permit) Abandon() {
	if p == nil || p.g == nil {
		return
	}
	g := p.g
	g.mu.Lock()
	if !p.releaseLocked() {
		g.mu.Unlock()
		return
	}
	g.scoutEndedLocked(p)
	ev := g.dispatchLocked(time.Now())
	g.mu.Unlock()
	g.emit(ev)
}

// scoutEndedLocked releases the fleet's scout lease when p, a scout, came
// back without reopening the gate.
func (g *Gate) scoutEndedLocked(p *Permit) {
	if p.scout && g.state == GateClosed && g.fleet.m != nil {
		g.fleetScoutEndLocked(false)
	}
}

// releaseLocked marks p done and frees its in-flight slot, under g.mu; it
// reports false if p was done already.
func (p *Permit) releaseLocked() bool {
	if p.done {
		return false
	}
	p.done = true
	p.g.inFlight--
	if p.scout {
		p.g.scoutsOut--
	}
	return true
}
