package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/registrar"
)

// fault is one kind of fault of the soak's matrix.
type fault struct {
	name  string
	about string
	// sip and links say which units it affects: each of them must notice
	// it and recover; a death of any other unit is false.
	sip, links bool
	// hold is how long the fault lasts before it is cleared.
	hold func(o *options) time.Duration
}

func holdFor(d time.Duration) func(*options) time.Duration {
	return func(*options) time.Duration { return d }
}

// silentHold is a silent fault's length: past the detection bound.
func silentHold(o *options) time.Duration { return o.bound() + 2*time.Second }

// stormHold is the 503 storm's length: 10 s, or half a shorter
// -fault-every.
func stormHold(o *options) time.Duration { return min(10*time.Second, o.faultEvery/2) }

// matrix is the soak's faults, drawn at random every -fault-every.
var matrix = []fault{
	{name: "blackhole", about: "the SIP and echo paths go silent (no FIN, no RST), then return", sip: true, links: true, hold: silentHold},
	{name: "peer-rst", about: "every SIP and echo connection reset by the server side", sip: true, links: true, hold: holdFor(0)},
	{name: "registrar-restart", about: "the registrar stops and starts again 2 s later: bindings, nonces and their secret lost", sip: true, hold: holdFor(2 * time.Second)},
	{name: "503-storm", about: "the SIP flow reset into a registrar serving trunks/4 REGISTERs per s, 503 Retry-After 5 s beyond, for 10 s (at most half of -fault-every)", sip: true, hold: stormHold},
	{name: "link-half-close", about: "the echo peer half-closes (FIN) every connection and keeps reading", links: true, hold: holdFor(0)},
	{name: "peer-hung", about: "the registrar and the echo peer stop answering with TCP alive (Kamailio SIGSTOPped; embedded: silent registrar), then resume", sip: true, links: true, hold: silentHold},
}

// pickFaults returns the matrix's faults named in a comma-separated list
// ("" means all).
func pickFaults(names string) ([]fault, error) {
	if names == "" {
		return matrix, nil
	}
	var out []fault
	for _, n := range strings.Split(names, ",") {
		n = strings.TrimSpace(n)
		found := false
		for _, f := range matrix {
			if f.name == n {
				out, found = append(out, f), true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown fault %q", n)
		}
	}
	return out, nil
}

// env is where the servers run and how faults are made there.
type env interface {
	// name is the JSON's env: "netns+kamailio" or "embedded".
	name() string
	sipURI() string
	echoAddr() string
	// clientCmd makes the command that runs the client (in the client's
	// network namespace when there is one).
	clientCmd(exe string, args []string) *exec.Cmd
	apply(ctx context.Context, f fault) error
	clear(ctx context.Context, f fault) error
	// contacts counts the bindings the registrar holds.
	contacts() (int, error)
	// stale counts the AoRs among registered (trunks that say
	// Registered) the registrar holds no binding for.
	stale(registered []string) (int, error)
	close() error
}

// embedded is the registrar of internal/registrar (the one behind
// sip/siptest) and the echo peer on loopback, each behind a freeze proxy of
// internal/faultproxy, in the parent process.
type embedded struct {
	trunks    int
	regCfg    registrar.Config
	reg       *registrar.Registrar
	regProxy  *faultproxy.Proxy
	echo      *peer
	echoProxy *faultproxy.Proxy
}

//nolint:contextcheck // registrar.New takes no ctx: it lives until close
func newEmbedded(o *options) (env, error) {
	e := &embedded{trunks: o.trunks, regCfg: registrar.Config{DisableUDP: true, Password: password, RetryAfter: 5 * time.Second}}
	var err error
	if e.reg, err = registrar.New(e.regCfg); err != nil {
		return nil, err
	}
	e.regCfg.Addr = e.reg.Addr()
	if e.regProxy, err = faultproxy.New(e.reg.Addr()); err != nil {
		_ = e.close()
		return nil, err
	}
	ln, err := listenLoopback()
	if err != nil {
		_ = e.close()
		return nil, err
	}
	e.echo = servePeer(ln)
	if e.echoProxy, err = faultproxy.New(e.echo.Addr()); err != nil {
		_ = e.close()
		return nil, err
	}
	return e, nil
}

func (e *embedded) name() string     { return "embedded" }
func (e *embedded) sipURI() string   { return "sip:" + e.regProxy.Addr() + ";transport=tcp" }
func (e *embedded) echoAddr() string { return e.echoProxy.Addr() }

func (e *embedded) clientCmd(exe string, args []string) *exec.Cmd { return exec.Command(exe, args...) }

func (e *embedded) apply(_ context.Context, f fault) error {
	switch f.name {
	case "blackhole":
		e.regProxy.Freeze()
		e.echoProxy.Freeze()
	case "peer-rst":
		e.regProxy.Reset()
		e.echoProxy.Reset()
	case "registrar-restart":
		return e.reg.Close()
	case "503-storm":
		e.reg.SetCapacity(max(float64(e.trunks)/4, 1))
		e.regProxy.Reset()
	case "link-half-close":
		e.echo.HalfClose()
	case "peer-hung":
		e.reg.SetSilent(true)
		e.echo.Hang()
	}
	return nil
}

func (e *embedded) clear(_ context.Context, f fault) error {
	switch f.name {
	case "blackhole":
		// Connections open through the hole stay black-holed; new ones
		// go through.
		e.regProxy.ForgetDrop()
		e.echoProxy.ForgetDrop()
	case "registrar-restart":
		r, err := registrar.New(e.regCfg) //nolint:contextcheck // registrar.New takes no ctx
		if err != nil {
			return fmt.Errorf("restart registrar: %w", err)
		}
		e.reg = r
	case "503-storm":
		e.reg.SetCapacity(0)
	case "peer-hung":
		e.reg.SetSilent(false)
		e.echo.Resume()
	}
	return nil
}

func (e *embedded) contacts() (int, error) { return e.reg.Stats().Bindings, nil }

func (e *embedded) stale(registered []string) (int, error) {
	n := 0
	for _, a := range registered {
		if len(e.reg.Bindings(a)) == 0 {
			n++
		}
	}
	return n, nil
}

func (e *embedded) close() error {
	for _, p := range []*faultproxy.Proxy{e.regProxy, e.echoProxy} {
		if p != nil {
			_ = p.Close()
		}
	}
	if e.echo != nil {
		_ = e.echo.Close()
	}
	if e.reg != nil {
		_ = e.reg.Close()
	}
	return nil
}
