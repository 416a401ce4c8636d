package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/sip"
)

// proc is one worker process and what it reported.
type proc struct {
	user    string
	logPath string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	done    chan struct{} // its stdout is read to the end

	mu         sync.Mutex
	registered []time.Time // each change to Registered
	lines      []stateLine
}

func (p *proc) registeredSince(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, at := range p.registered {
		if !at.Before(t) {
			return at, true
		}
	}
	return time.Time{}, false
}

func (p *proc) read(r io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var l stateLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		p.mu.Lock()
		p.lines = append(p.lines, l)
		if l.To == sip.Registered.String() {
			p.registered = append(p.registered, time.Unix(0, l.At))
		}
		p.mu.Unlock()
	}
}

// round is one measurement: a fresh Kamailio, fresh processes.
type round struct {
	o     *options
	n     int
	p     *netns.Pair
	logs  string
	ko    kamailio.Options
	k     *kamailio.Instance
	cap   *capture
	procs []*proc
	res   Result

	cutAt, restoreBegin time.Time
	hole                *hole
}

// runRound: setup (Kamailio, capture, P registered processes) → fault (cut,
// restart Kamailio inside the hole) → restore (until every trunk is back,
// or the cap) → report.
func runRound(ctx context.Context, o *options, p *netns.Pair, n int, logs string) (Result, error) {
	r := &round{o: o, n: n, p: p, logs: logs, res: Result{Round: n, Procs: o.procs, HoleS: o.hole.Seconds(),
		RestartAfterS: o.restartAfter.Seconds(), Measurement: measurement}}
	defer r.close()
	if err := r.setup(ctx); err != nil {
		return r.res, err
	}
	if err := r.fault(ctx); err != nil {
		return r.res, err
	}
	if err := r.restore(ctx); err != nil {
		return r.res, err
	}
	r.report()
	return r.res, nil
}

func (r *round) close() {
	for _, pr := range r.procs {
		pr.stdin.Close()
	}
	for _, pr := range r.procs {
		stopProc(pr)
	}
	if r.hole != nil {
		_ = r.hole.lift(r.hole.client)
		_ = r.hole.lift(r.hole.server)
	}
	if r.cap != nil {
		r.cap.close()
	}
	if r.k != nil {
		_ = r.k.Stop()
	}
}

// stopProc waits for a worker whose stdin is closed, killing it after 10 s.
func stopProc(pr *proc) {
	t := time.AfterFunc(10*time.Second, func() { _ = pr.cmd.Process.Kill() })
	defer t.Stop()
	<-pr.done
	_ = pr.cmd.Wait()
}

func (r *round) setup(ctx context.Context) error {
	r.ko = kamailio.Options{Netns: r.p.Server().Name(), Addr: net.JoinHostPort(netns.ServerIP.String(), "0"),
		TCPLifetime: time.Hour, StartTimeout: 20 * time.Second}
	var err error
	if r.k, err = kamailio.Launch(ctx, r.ko); err != nil {
		return err
	}
	r.ko.Addr = r.k.Addr() // the restart listens on the same port
	_, ps, _ := net.SplitHostPort(r.k.Addr())
	port, _ := strconv.Atoi(ps)
	if r.cap, err = startCapture(r.p.Server(), netns.ServerIP, uint16(port)); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	for i := range r.o.procs {
		pr, err := r.startProc(exe, i)
		if err != nil {
			return err
		}
		r.procs = append(r.procs, pr)
	}
	since := time.Time{}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second+time.Duration(r.o.procs)*200*time.Millisecond)
	defer cancel()
	if err := r.waitRegistered(wctx, since); err != nil {
		return fmt.Errorf("initial registration: %w", err)
	}
	return nil
}

func (r *round) startProc(exe string, i int) (*proc, error) {
	user := "t" + strconv.Itoa(i)
	pr := &proc{user: user, logPath: filepath.Join(r.logs, fmt.Sprintf("round%d-%s.log", r.n, user)), done: make(chan struct{})}
	spec, _ := json.Marshal(workerConfig{Registrar: r.k.URI(), AOR: "sip:" + user + "@" + r.k.Realm(),
		Password: r.k.Password(), KeepAlive: r.o.keepAlive, Timeout: r.o.timeout, RequestTimeout: r.o.reqTimeout,
		LogPath: pr.logPath})
	pr.cmd = exec.Command("ip", "netns", "exec", r.p.Client().Name(), exe)
	pr.cmd.Env = append(os.Environ(), workerEnv+"="+string(spec))
	pr.cmd.Stderr = os.Stderr
	var err error
	if pr.stdin, err = pr.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := pr.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := pr.cmd.Start(); err != nil {
		return nil, err
	}
	go pr.read(out)
	return pr, nil
}

// waitRegistered waits until every process reported Registered at or after
// since.
func (r *round) waitRegistered(ctx context.Context, since time.Time) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		n := 0
		for _, pr := range r.procs {
			if _, ok := pr.registeredSince(since); ok {
				n++
			}
		}
		if n == len(r.procs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d registered: %w", n, len(r.procs), context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// fault black-holes the path, restarts Kamailio inside the hole (every
// binding lost) and waits for the end of the hole.
func (r *round) fault(ctx context.Context) error {
	if !ctxtime.Sleep(ctx, time.Second) { // a few pongs on every flow
		return ctx.Err()
	}
	_, ps, _ := net.SplitHostPort(r.k.Addr())
	port, _ := strconv.Atoi(ps)
	var err error
	r.cutAt = time.Now()
	if r.hole, err = newHole(r.p, port); err != nil {
		return err
	}
	if !ctxtime.Sleep(ctx, r.o.restartAfter) {
		return ctx.Err()
	}
	if err := r.k.Stop(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop Kamailio: %w", err)
	}
	if r.k, err = kamailio.Launch(ctx, r.ko); err != nil {
		r.k = nil
		return fmt.Errorf("restart Kamailio: %w", err)
	}
	if !ctxtime.Sleep(ctx, time.Until(r.cutAt.Add(r.o.hole))) {
		return ctx.Err()
	}
	return nil
}

// restore removes the black hole and waits until every trunk is Registered
// again, or the cap.
func (r *round) restore(ctx context.Context) error {
	// The replies first (nothing can use them yet), then the requests:
	// the clock starts as that last step begins.
	if err := r.hole.lift(r.hole.client); err != nil {
		return err
	}
	r.restoreBegin = time.Now()
	err := r.hole.lift(r.hole.server)
	r.res.RestoreMs = float64(time.Since(r.restoreBegin).Microseconds()) / 1000
	r.hole = nil
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, r.o.capAfter)
	defer cancel()
	if err := r.waitRegistered(wctx, r.restoreBegin); err != nil && ctx.Err() != nil {
		return err
	}
	return nil
}

// report fills the result in from the capture and the processes' reports.
func (r *round) report() {
	firsts := r.cap.firstRegisters(r.restoreBegin)
	res := &r.res
	res.RegistersInHole = r.cap.registersSince(r.cutAt) - r.cap.registersSince(r.restoreBegin)
	slowest := -1.0
	for _, pr := range r.procs {
		if f, ok := firsts[pr.user]; ok {
			res.firstRegs = append(res.firstRegs, max(0, f.Sub(r.restoreBegin).Seconds()))
		} else {
			res.NoRegisterSeen++
		}
		back, ok := pr.registeredSince(r.restoreBegin)
		d := r.o.capAfter.Seconds()
		if ok {
			res.Recovered++
			d = back.Sub(r.restoreBegin).Seconds()
			res.recoverDurs = append(res.recoverDurs, d)
		} else {
			res.Stuck++
		}
		if d > slowest {
			slowest = d
			res.SlowestTrunk, res.SlowestRecoverS, res.SlowestLog = pr.user, d, pr.logPath
			res.SlowestFirstRegisterS = -1
			if f, ok := firsts[pr.user]; ok {
				res.SlowestFirstRegisterS = max(0, f.Sub(r.restoreBegin).Seconds())
			}
		}
	}
	res.summarize()
}
