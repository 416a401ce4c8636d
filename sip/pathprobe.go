package sip

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pathProbeEvery is how often, while a connection attempt waits on a
// destination whose previous attempt timed out (a black hole), relink
// sends a bare TCP connect (one SYN) to see whether the path is back.
const pathProbeEvery = 100 * time.Millisecond

// pathProbe watches the path to a destination while a connection attempt
// that may have lost its SYN waits: every pathProbeEvery it starts a bare
// TCP connect (closed as soon as it succeeds), each bounded by the attempt.
// The first that connects shows the path is back: if the attempt is still
// waiting a short grace later (three of that connect's round trips and
// 20 ms, room for a handshake already under way), its SYN was lost, and
// the probe cancels it so that the caller redials at once instead of at
// the end of its bound. A slow path loses nothing: the attempt keeps its
// whole bound unless a later SYN got through first.
type pathProbe struct {
	stop    context.CancelFunc // ends the probes
	wg      sync.WaitGroup
	claimed atomic.Bool // a probe connected: it alone may cancel the attempt
	up      atomic.Bool // it did cancel the attempt
}

// startPathProbe starts probing address over TCP with d until actx ends or
// end is called; cancel ends the attempt. The caller must call end.
func startPathProbe(actx context.Context, cancel context.CancelFunc, d net.Dialer, address string) *pathProbe {
	pctx, stop := context.WithCancel(actx)
	p := &pathProbe{stop: stop}
	p.wg.Go(func() {
		t := time.NewTicker(pathProbeEvery)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-t.C:
			}
			p.wg.Go(func() {
				start := time.Now()
				c, err := d.DialContext(pctx, "tcp", address)
				if err != nil {
					return
				}
				rtt := time.Since(start)
				_ = c.Close()
				if !p.claimed.CompareAndSwap(false, true) {
					return
				}
				grace := time.NewTimer(3*rtt + 20*time.Millisecond)
				defer grace.Stop()
				select {
				case <-pctx.Done(): // the attempt ended by itself
				case <-grace.C:
					p.up.Store(true)
					cancel()
				}
			})
		}
	})
	return p
}

// end stops the probes and waits for them; it reports whether a probe saw
// the path back and cancelled the attempt.
func (p *pathProbe) end() bool {
	p.stop()
	p.wg.Wait()
	return p.up.Load()
}
