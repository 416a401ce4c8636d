package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ratelimit"
)

// -server window: the gate alone, no SIP, no black hole. Each worker's
// clients admit through its gate towards a UDP server in this process that
// admits C per 100 ms window ("1") and rejects the rest ("0", read as a
// Retry-After); the clock starts when every process has joined and is told
// to go.

// windowHerd runs one strategy against a fresh window server.
func windowHerd(e *env, strategy string) (Result, error) {
	o := e.o
	srv, err := newServer(o.capacity)
	if err != nil {
		return Result{}, err
	}
	defer e.atExit(srv.close)()
	exe, err := os.Executable()
	if err != nil {
		return Result{}, err
	}
	key := e.fleetKey(strategy)
	ws, err := startWorkers(o.procs, func(i int) *exec.Cmd {
		return exec.Command(exe, workerArgs(o, strategy, i, srv.addr(), key)...)
	}, 30*time.Second)
	if err != nil {
		return Result{}, err
	}
	defer e.atExit(ws.kill)()
	if strategy == "shared-redis-down" {
		if e.redis == nil {
			return Result{}, fmt.Errorf("needs the Redis this command starts (no -redis)")
		}
		e.redis.kill()
		defer func() { _ = e.redis.restart() }() // empty, for the strategies after
	}
	start := time.Now()
	ws.tell("go")
	outs := ws.reports(o.timeout + 5*time.Second)
	r := tally(o, strategy, start, outs, srv.arrivals())
	r.Registrar = "window"
	rejected := 0
	for _, w := range outs {
		rejected += w.Rejected
	}
	r.RejectedFrac = float64(rejected) / float64(o.procs*o.trunks)
	return r, nil
}

// server admits capacity per 100 ms window and rejects the rest with a
// Retry-After, over UDP: a datagram in, "1" (admitted) or "0" out.
type server struct {
	pc  net.PacketConn
	lim *ratelimit.Window
	mu  sync.Mutex
	at  []time.Time
	wg  sync.WaitGroup
}

func newServer(capacity float64) (*server, error) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{pc: pc, lim: ratelimit.NewWindow(100*time.Millisecond, capacity)}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *server) addr() string { return s.pc.LocalAddr().String() }

func (s *server) serve() {
	defer s.wg.Done()
	buf := make([]byte, 64)
	for {
		_, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		now := time.Now()
		s.mu.Lock()
		ok := s.lim.Admit(now)
		s.at = append(s.at, now)
		s.mu.Unlock()
		answer := []byte("0")
		if ok {
			answer = []byte("1")
		}
		_, _ = s.pc.WriteTo(answer, from)
	}
}

func (s *server) close() {
	s.pc.Close()
	s.wg.Wait()
}

// arrivals returns every arrival, sorted.
func (s *server) arrivals() []time.Time {
	s.mu.Lock()
	at := slices.Clone(s.at)
	s.mu.Unlock()
	sortTimes(at)
	return at
}

// runWindowWorker is one process: its gate, "ready", then on "go" its
// clients.
func runWindowWorker(o *options) error {
	cfg, counted, done, err := gateConfig(o)
	if err != nil {
		return err
	}
	defer done()
	cfg.Destination = "window"
	g := backoff.NewGate(cfg)
	time.Sleep(500 * time.Millisecond) // heartbeats: every member counted
	if o.worker == "shared-redis-down" {
		// A process that has been running knows the fleet's pace: one
		// admission adopts it (the server is not asked).
		p, err := g.Acquire(context.Background())
		if err != nil {
			return err
		}
		p.Done(backoff.Success)
	}
	fmt.Println("ready")
	if err := expectLine(bufio.NewReader(os.Stdin), "go"); err != nil {
		return err
	}
	if counted != nil {
		counted.reset()
	}
	rep := clients(o, g)
	if os.Getenv("RELINK_FLEET_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "worker %d: %+v\n", o.id, g.Stats())
	}
	g.Close()
	if counted != nil {
		rep.Calls, rep.MaxWaitNs = int(counted.calls.Load()), counted.slowest.Load()
	}
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
	return nil
}

// clients runs the process's clients through g until each is admitted, or
// until the timeout.
func clients(o *options, g *backoff.Gate) workerReport {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	var mu sync.Mutex
	var rep workerReport
	var wg sync.WaitGroup
	for range o.trunks {
		wg.Go(func() {
			attempts, rejected, ok := client(ctx, o, g)
			mu.Lock()
			defer mu.Unlock()
			rep.Attempts += attempts
			rep.Rejected += rejected
			if !ok {
				rep.Stuck++
				return
			}
			rep.DoneUnixNano = max(rep.DoneUnixNano, time.Now().UnixNano())
		})
	}
	wg.Wait()
	return rep
}

// client retries one registration through g until the server admits it.
func client(ctx context.Context, o *options, g *backoff.Gate) (attempts, rejected int, ok bool) {
	c, err := net.Dial("udp", o.target)
	if err != nil {
		return 0, 0, false
	}
	defer c.Close()
	buf := make([]byte, 8)
	for {
		p, err := g.Acquire(ctx)
		if err != nil {
			return attempts, rejected, false
		}
		attempts++
		_ = c.SetDeadline(time.Now().Add(time.Second))
		_, err = c.Write([]byte("R"))
		var n int
		if err == nil {
			n, err = c.Read(buf)
		}
		switch {
		case err != nil:
			p.Done(backoff.Unreachable)
		case n == 1 && buf[0] == '1':
			p.Done(backoff.Success)
			return attempts, rejected, true
		default:
			rejected++
			p.Done(backoff.Overload(o.retryAfter))
		}
	}
}
