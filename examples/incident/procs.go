package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
)

// workerEnv, set to "1" in a process's environment, makes it a worker of
// -procs (workerMain) instead of an incident.
const workerEnv = "RELINK_INCIDENT_WORKER"

// procsSide is the relink population of -procs: P worker processes (this
// program, re-executed), each running its share of the trunks in a
// sip.Fleet whose gate keeps its state on one Redis (backoff/fleetgate), so
// that all P admit towards the registrar at one pace. The parent keeps the
// registrar, the freeze proxy and the timeline; workers report their
// figures as JSON lines on stdout and take the incident's moments on stdin.
type procsSide struct {
	pc      popConfig
	cfg     config
	m       *marks
	redis   string // the address the workers use
	prefix  string // the run's keys on Redis
	mini    *miniredis.Miniredis
	stopFF  chan struct{}
	ffDone  chan struct{}
	workers []*worker
	evMu    sync.Mutex
}

var _ relinkSide = (*procsSide)(nil)

// worker is one worker process, as the parent sees it.
type worker struct {
	users []string
	cmd   *exec.Cmd
	in    io.WriteCloser
	mu    sync.Mutex
	stats workerStats
	ends  chan workerEnd // its figures at the stop mark
	done  chan struct{}  // closed when its stdout ends
}

// newProcsSide starts Redis (the embedded one unless cfg.Redis names one)
// and splits the trunks of pc over cfg.Procs workers; start starts them.
func newProcsSide(pc popConfig, cfg config, m *marks) (*procsSide, error) {
	s := &procsSide{pc: pc, cfg: cfg, m: m, redis: cfg.Redis,
		prefix: fmt.Sprintf("relink:incident:%d:", time.Now().UnixNano())} // this run's gate, nothing learned
	if s.redis == "" {
		mini := miniredis.NewMiniRedis()
		if err := mini.Start(); err != nil {
			return nil, fmt.Errorf("incident: embedded redis: %w", err)
		}
		s.mini, s.redis = mini, mini.Addr()
		s.stopFF, s.ffDone = make(chan struct{}), make(chan struct{})
		go s.fastForward()
	}
	n, p := len(pc.Users), cfg.Procs
	first := 0
	for i := range p {
		k := n / p
		if i < n%p {
			k++
		}
		s.workers = append(s.workers, &worker{users: pc.Users[first : first+k],
			ends: make(chan workerEnd, 1), done: make(chan struct{})})
		first += k
	}
	return s, nil
}

// fastForward makes the embedded Redis's key expiries follow the wall
// clock: miniredis expires keys only when told that time has passed (its
// TIME, which fleetgate's scripts read, is the wall clock already).
func (s *procsSide) fastForward() {
	defer close(s.ffDone)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stopFF:
			return
		case now := <-t.C:
			s.mini.FastForward(now.Sub(last))
			last = now
		}
	}
}

// redisNote names where the workers' shared gate state lives.
func redisNote(addr string) string {
	if addr == "" {
		return "an embedded Redis-compatible server (miniredis)"
	}
	return "Redis at " + addr
}

// start starts the worker processes.
func (s *procsSide) start(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("incident: -procs: %w", err)
	}
	for i, w := range s.workers {
		args := []string{"-id", strconv.Itoa(i), "-registrar", s.pc.Registrar, "-host", s.pc.Host,
			"-pass", s.pc.Pass, "-keepalive", s.pc.KeepAlive.String(), "-redis", s.redis, "-prefix", s.prefix,
			"-start", strconv.FormatInt(s.m.start.UnixNano(), 10), "-users", strings.Join(w.users, ",")}
		if s.pc.Events != nil {
			args = append(args, "-v")
		}
		//nolint:gosec // re-executes this very program as a worker
		w.cmd = exec.CommandContext(ctx, exe, args...)
		w.cmd.Env = append(os.Environ(), workerEnv+"=1")
		w.cmd.Stderr = os.Stderr
		if w.in, err = w.cmd.StdinPipe(); err != nil {
			return err
		}
		out, err := w.cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := w.cmd.Start(); err != nil {
			return fmt.Errorf("incident: worker %d: %w", i, err)
		}
		go s.read(w, out)
	}
	return nil
}

// read takes a worker's messages until its stdout ends.
func (s *procsSide) read(w *worker, out io.Reader) {
	defer close(w.done)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var msg workerMsg
		if json.Unmarshal(sc.Bytes(), &msg) != nil {
			continue
		}
		switch {
		case msg.Stats != nil:
			w.mu.Lock()
			w.stats = *msg.Stats
			w.mu.Unlock()
		case msg.End != nil:
			w.ends <- *msg.End
		case msg.Event != "" && s.pc.Events != nil:
			s.evMu.Lock()
			fmt.Fprint(s.pc.Events, msg.Event)
			s.evMu.Unlock()
		}
	}
}

// sum adds up the workers' latest figures.
func (s *procsSide) sum() (total workerStats) {
	for i, w := range s.workers {
		w.mu.Lock()
		st := w.stats
		w.mu.Unlock()
		total.Believed += st.Believed
		total.Recovered += st.Recovered
		total.Tx += st.Tx
		total.Rejected += st.Rejected
		if i == 0 {
			total.Gate = st.Gate
		}
	}
	return total
}

func (s *procsSide) believed() int  { return s.sum().Believed }
func (s *procsSide) tx() uint64     { return s.sum().Tx }
func (s *procsSide) recovered() int { return s.sum().Recovered }

func (s *procsSide) gate() (string, uint64) {
	t := s.sum()
	if t.Gate == "" {
		t.Gate = "-"
	}
	return fmt.Sprintf("%s ×%d", t.Gate, len(s.workers)), t.Rejected
}

// mark tells every worker the moment.
func (s *procsSide) mark(kind markKind, at int64) {
	kind.set(s.m, at)
	for _, w := range s.workers {
		_, _ = fmt.Fprintf(w.in, "%s %d\n", kind, at)
	}
}

// end collects the workers' figures, sent at the stop mark.
func (s *procsSide) end() ([]recSnap, []procEnd, error) {
	var snaps []recSnap
	var procs []procEnd
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for i, w := range s.workers {
		select {
		case e := <-w.ends:
			if len(e.Recs) != len(w.users) {
				return nil, nil, fmt.Errorf("incident: worker %d sent %d records for %d trunks", i, len(e.Recs), len(w.users))
			}
			snaps = append(snaps, e.Recs...)
			procs = append(procs, e.Proc)
		case <-w.done:
			return nil, nil, fmt.Errorf("incident: worker %d ended before its report: %w", i, errWorker)
		case <-deadline.C:
			return nil, nil, fmt.Errorf("incident: worker %d sent no report within 15 s: %w", i, errWorker)
		}
	}
	return snaps, procs, nil
}

var errWorker = errors.New("incident: worker failed")

// shutdown tells every worker to stop (its trunks unregister) and waits for
// them, 15 s at most before killing them.
func (s *procsSide) shutdown() {
	for _, w := range s.workers {
		if w.in != nil {
			_, _ = io.WriteString(w.in, "quit\n")
			_ = w.in.Close()
		}
	}
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for _, w := range s.workers {
		if w.cmd == nil || w.cmd.Process == nil {
			continue
		}
		select {
		case <-w.done:
		case <-deadline.C:
			_ = w.cmd.Process.Kill()
		}
		_ = w.cmd.Wait()
		w.cmd = nil
	}
}

// close kills what is left and stops the embedded Redis.
func (s *procsSide) close() {
	s.shutdown()
	if s.mini != nil {
		close(s.stopFF)
		<-s.ffDone
		s.mini.Close()
		s.mini = nil
	}
}
