package main

import (
	"context"
	"time"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

// echoServer is what Links talk to.
type echoServer interface {
	Addr() string
	Close() error
}

func testkitEcho() (echoServer, error) { return testkit.ListenEcho("127.0.0.1:0") }

// sipOnly starts a registrar behind a proxy and a registered fleet.
func sipOnly(ctx context.Context, o *options, rc registrar.Config, tc func(*sip.TrunkConfig), fc func(*sip.FleetConfig)) (*world, error) {
	w := newWorld(o)
	if _, err := w.addRegistrar(rc); err != nil {
		return w, err
	}
	return w, w.startFleet(ctx, true, tc, fc)
}

// sipAndLinks is sipOnly plus o.links Links to an echo server.
func sipAndLinks(ctx context.Context, o *options, rc registrar.Config, echo func() (echoServer, error), busy bool) (*world, error) {
	w, err := sipOnly(ctx, o, rc, nil, nil)
	if err != nil || o.links == 0 {
		return w, err
	}
	e, err := echo()
	if err != nil {
		return w, err
	}
	w.links, err = startLinks(ctx, o, e, busy, nil)
	return w, err
}

// fault runs the row's phases: cut, hold, restore, recovery, stop.
func (w *world) fault(ctx context.Context, hold time.Duration, cut, restore func()) error {
	w.markCut()
	cut()
	if err := sleep(ctx, hold); err != nil {
		return err
	}
	if restore != nil {
		restore()
	}
	return w.finish(ctx)
}

// finish marks the restore, waits for the recovery and stops.
func (w *world) finish(ctx context.Context) error {
	w.markRestore()
	err := w.waitRecovered(ctx)
	w.stop()
	return err
}

// eachProxy applies f to the first registrar's proxy and the Links' proxy.
func (w *world) eachProxy(f func(*faultproxy.Proxy)) {
	f(w.regs[0].proxy)
	if w.links != nil && w.links.proxy != nil {
		f(w.links.proxy)
	}
}
