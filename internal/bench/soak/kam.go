package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// nsEnv is Kamailio and the echo peer in the server namespace of a
// netns.Pair, the client process in the client namespace (ip netns exec),
// and nft rules for the black hole: a real path, cut as production paths
// are.
type nsEnv struct {
	trunks   int
	pair     *netns.Pair
	kamOpts  kamailio.Options
	kam      *kamailio.Instance
	echo     *peer
	restores []func() error
	stopped  bool // Kamailio SIGSTOPped
}

// netnsAvailable says why the netns form cannot run here (nil if it can).
func netnsAvailable() error {
	if err := netns.Available(); err != nil {
		return err
	}
	return kamailio.Available()
}

func newNetns(ctx context.Context, o *options) (env, error) {
	e := &nsEnv{trunks: o.trunks}
	var err error
	if e.pair, err = netns.New(); err != nil {
		return nil, err
	}
	e.kamOpts = kamailio.Options{Netns: e.pair.Server().Name(), Addr: net.JoinHostPort(netns.ServerIP.String(), "0"),
		Password: password, RetryAfter: 5 * time.Second}
	if e.kam, err = kamailio.Launch(ctx, e.kamOpts); err != nil {
		_ = e.close()
		return nil, err
	}
	e.kamOpts.Addr = e.kam.Addr() // a restart comes back on the same port
	ln, err := e.pair.ListenTCP(0)
	if err != nil {
		_ = e.close()
		return nil, err
	}
	e.echo = servePeer(ln)
	return e, nil
}

func (e *nsEnv) name() string     { return "netns+kamailio" }
func (e *nsEnv) sipURI() string   { return e.kam.URI() }
func (e *nsEnv) echoAddr() string { return e.echo.Addr() }

func (e *nsEnv) clientCmd(exe string, args []string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", e.pair.Client().Name(), exe}, args...)...)
}

func (e *nsEnv) apply(ctx context.Context, f fault) error {
	switch f.name {
	case "blackhole":
		for _, port := range []int{portOf(e.kamOpts.Addr), e.echo.Port()} {
			r, err := e.pair.BlackHole(port)
			if err != nil {
				return err
			}
			e.restores = append(e.restores, r)
		}
	case "peer-rst":
		return e.killSockets(portOf(e.kamOpts.Addr), e.echo.Port())
	case "registrar-restart":
		return e.kam.Stop()
	case "503-storm":
		if err := e.kam.SetRateRetryAfter(5 * time.Second); err != nil {
			return err
		}
		if err := e.kam.SetRate(max(float64(e.trunks)/4, 1)); err != nil {
			return err
		}
		return e.killSockets(portOf(e.kamOpts.Addr))
	case "link-half-close":
		e.echo.HalfClose()
	case "peer-hung":
		e.echo.Hang()
		return e.signalKamailio(syscall.SIGSTOP)
	}
	return nil
}

func (e *nsEnv) clear(ctx context.Context, f fault) error {
	switch f.name {
	case "blackhole":
		var errs []error
		for _, r := range e.restores {
			errs = append(errs, r())
		}
		e.restores = nil
		return errors.Join(errs...)
	case "registrar-restart":
		k, err := kamailio.Launch(ctx, e.kamOpts)
		if err != nil {
			return fmt.Errorf("restart kamailio: %w", err)
		}
		e.kam = k
	case "503-storm":
		return e.kam.SetRate(0)
	case "peer-hung":
		e.echo.Resume()
		return e.signalKamailio(syscall.SIGCONT)
	}
	return nil
}

// killSockets aborts every established TCP connection of the server
// namespace on these local ports (ss -K): the kernel sends each peer a
// RST, as a server that crashed or a middlebox that gave up would.
func (e *nsEnv) killSockets(ports ...int) error {
	var sel []string
	for _, p := range ports {
		if len(sel) > 0 {
			sel = append(sel, "or")
		}
		sel = append(sel, "sport", "=", ":"+strconv.Itoa(p))
	}
	args := append([]string{"netns", "exec", e.pair.Server().Name(), "ss", "-K", "-t", "state", "established", "("}, sel...)
	out, err := exec.Command("ip", append(args, ")")...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ss -K: %w: %s", err, out)
	}
	return nil
}

// signalKamailio sends sig to Kamailio's process group (its pid file's
// process leads it): SIGSTOP hangs every Kamailio process with its sockets
// open (the kernel still acknowledges), SIGCONT resumes them.
func (e *nsEnv) signalKamailio(sig syscall.Signal) error {
	b, err := os.ReadFile(filepath.Join(filepath.Dir(e.kam.CtlSocket()), "kamailio.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("kamailio pid file: %q", b)
	}
	e.stopped = sig == syscall.SIGSTOP
	return syscall.Kill(-pid, sig)
}

func (e *nsEnv) contacts() (int, error) {
	st, err := e.kam.Stats()
	return st.Contacts, err
}

// stale asks Kamailio: when every trunk is registered, the AoRs it holds
// (usrloc's location_users; the soak's trunks are its only users) tell
// how many lack a binding; otherwise each registered AoR is looked up
// (ul.dump fails on thousands of AoRs).
func (e *nsEnv) stale(registered []string) (int, error) {
	if len(registered) == e.trunks {
		st, err := e.kam.Stats()
		if err != nil {
			return 0, err
		}
		return max(0, len(registered)-st.Users), nil
	}
	n := 0
	for _, a := range registered {
		user, _, _ := strings.Cut(strings.TrimPrefix(a, "sip:"), "@")
		cs, err := e.kam.Contacts(user)
		if err != nil {
			return 0, err
		}
		if len(cs) == 0 {
			n++
		}
	}
	return n, nil
}

func (e *nsEnv) close() error {
	if e.stopped {
		_ = e.signalKamailio(syscall.SIGCONT)
	}
	for _, r := range e.restores {
		_ = r()
	}
	if e.echo != nil {
		_ = e.echo.Close()
	}
	var err error
	if e.kam != nil {
		err = e.kam.Stop()
	}
	return errors.Join(err, e.pair.Close())
}

func portOf(addr string) int {
	_, ps, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(ps)
	return p
}
