// Command fleet measures fleet-wide admission with operating-system
// processes: P processes of T clients each recover at the same moment towards
// one server that admits C attempts per second, counted per 100 ms window,
// and answers the excess at once with a rejection carrying Retry-After (a
// registrar's 503). Every process admits through its own backoff.Gate: local,
// or shared through Redis (backoff/fleetgate).
//
//	go run ./internal/bench/fleet -procs 50 -trunks 40 -capacity 200 -json
//	go run ./internal/bench/fleet -redis 127.0.0.1:6379   # a Redis of yours
//
// Without -redis it starts redis-server (Debian's) on a free port. The
// server is a UDP service in this process; the clock starts when every
// process has joined and is told to go (the path's restore), so the figures
// are the gate's, not SIP's (internal/bench/siprecovery measures SIP).
//
// Strategies (-strategies, comma-separated): local (each process its own
// adaptive gate), local-rate (each told C), shared (one fleet gate, learning
// C), shared-rate (told C), shared-second-herd (a second herd after shared,
// with the learned pace kept in Redis) and shared-redis-down (Redis killed
// at the restore: every process on its share of the last known pace).
//
// RELINK_FLEET_DEBUG=1 prints each worker's gate at the end;
// RELINK_FLEET_LOG=1 prints every Redis call that proposes or learns a pace.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/ratelimit"
	"github.com/relinkgo/relink/internal/redistest"
)

// Result is one strategy's figures; -json prints one per line.
type Result struct {
	Strategy             string  `json:"strategy"`
	Procs                int     `json:"procs"`
	Trunks               int     `json:"trunks"`
	Capacity             float64 `json:"capacity"`
	RecoverS             float64 `json:"recover_s"`
	RatioToLimit         float64 `json:"ratio_to_limit"`
	RejectedFrac         float64 `json:"rejected_frac"`
	PeakLoadRatio        float64 `json:"peak_load_ratio"`
	RedisOpsPerAdmission float64 `json:"redis_ops_per_admission"`
	MaxRedisWaitMs       float64 `json:"max_redis_wait_ms"`
	Stuck                int     `json:"stuck"`
}

// options are the flags, shared by the parent and its workers.
type options struct {
	procs, trunks int
	capacity      float64
	retryAfter    time.Duration
	timeout       time.Duration
	redis         string
	jsonOut       bool
	strategies    string
	// worker only
	worker   string // the strategy, when this process is a worker
	id       int
	server   string
	fleetKey string
}

func main() {
	var o options
	flag.IntVar(&o.procs, "procs", 50, "processes")
	flag.IntVar(&o.trunks, "trunks", 40, "clients per process")
	flag.Float64Var(&o.capacity, "capacity", 200, "attempts per second the server admits, counted per 100 ms")
	flag.DurationVar(&o.retryAfter, "retry-after", time.Second, "Retry-After of each rejection")
	flag.DurationVar(&o.timeout, "timeout", time.Minute, "a strategy's clients still waiting after this are stuck")
	flag.StringVar(&o.redis, "redis", "", "host:port of a Redis to use (default: start redis-server)")
	flag.BoolVar(&o.jsonOut, "json", false, "one JSON object per strategy")
	flag.StringVar(&o.strategies, "strategies", "local,local-rate,shared,shared-rate,shared-second-herd,shared-redis-down", "strategies to run, in order")
	flag.StringVar(&o.worker, "worker", "", "internal: run as a worker process for this strategy")
	flag.IntVar(&o.id, "id", 0, "internal: the worker's number")
	flag.StringVar(&o.server, "server", "", "internal: the server's UDP address")
	flag.StringVar(&o.fleetKey, "fleet-key", "", "internal: the gate's destination")
	flag.Parse()
	var err error
	if o.worker != "" {
		err = runWorker(&o)
	} else {
		err = run(&o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

// run is the parent: setup → one herd per strategy → report.
func run(o *options) error {
	rs, err := startRedis(o)
	if err != nil {
		return err
	}
	if rs != nil {
		defer os.RemoveAll(rs.Dir())
		defer rs.Kill()
	}
	for _, strategy := range strings.Split(o.strategies, ",") {
		r, err := herd(o, rs, strategy)
		if err != nil {
			return fmt.Errorf("%s: %w", strategy, err)
		}
		report(o, r)
	}
	return nil
}

// startRedis starts redis-server unless -redis names one.
func startRedis(o *options) (*redistest.Server, error) {
	if o.redis != "" {
		return nil, nil
	}
	dir, err := os.MkdirTemp("", "relink-fleet-")
	if err != nil {
		return nil, err
	}
	s, err := redistest.Launch(dir)
	if err != nil {
		return nil, err
	}
	o.redis = s.Addr()
	return s, nil
}

func report(o *options, r Result) {
	if o.jsonOut {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%-19s %d×%d C=%v: %.2f × N/C (%.2f s), %.1f %% rejected, peak %.2f, %.2f Redis ops/admission, max Redis wait %.1f ms, stuck %d\n",
		r.Strategy, r.Procs, r.Trunks, r.Capacity, r.RatioToLimit, r.RecoverS, 100*r.RejectedFrac,
		r.PeakLoadRatio, r.RedisOpsPerAdmission, r.MaxRedisWaitMs, r.Stuck)
}

// herd runs one strategy: the server, the workers, the restore, the figures.
func herd(o *options, rs *redistest.Server, strategy string) (Result, error) {
	srv, err := newServer(o.capacity)
	if err != nil {
		return Result{}, err
	}
	defer srv.close()
	key := fmt.Sprintf("bench-%d", time.Now().UnixNano()) // a fresh fleet: nothing learned
	switch strategy {
	case "shared":
		lastKey = key
	case "shared-second-herd", "shared-redis-down":
		// The fleet of the last shared herd: what it learned is kept (the
		// workers of shared-redis-down learn it in a warm-up admission,
		// before Redis dies).
		if lastKey != "" {
			key = lastKey
		}
	}
	ws, err := startWorkers(o, strategy, srv.addr(), key)
	if err != nil {
		return Result{}, err
	}
	defer ws.kill()
	if strategy == "shared-redis-down" {
		if rs == nil {
			return Result{}, fmt.Errorf("needs the Redis this command starts (no -redis)")
		}
		rs.Kill()
		defer func() { _ = rs.Restart() }() // empty, for the strategies after
	}
	start := time.Now()
	outs := ws.run(o.timeout)
	return tally(o, strategy, start, srv, outs), nil
}

// lastKey is the destination of the last shared herd (learning C), which
// shared-second-herd and shared-redis-down recover towards again.
var lastKey string

// tally turns the workers' reports and the server's arrivals into a Result.
func tally(o *options, strategy string, start time.Time, srv *server, outs []workerReport) Result {
	n := o.procs * o.trunks
	r := Result{Strategy: strategy, Procs: o.procs, Trunks: o.trunks, Capacity: o.capacity}
	var end time.Time
	var calls, attempts, rejected int
	for _, w := range outs {
		end = laterOf(end, time.Unix(0, w.DoneUnixNano))
		calls += w.Calls
		attempts += w.Attempts
		rejected += w.Rejected
		r.Stuck += w.Stuck
		r.MaxRedisWaitMs = max(r.MaxRedisWaitMs, float64(w.MaxWaitNs)/1e6)
	}
	r.Stuck += (o.procs - len(outs)) * o.trunks // workers that never reported
	r.RecoverS = end.Sub(start).Seconds()
	r.RatioToLimit = r.RecoverS / (float64(n) / o.capacity)
	r.RejectedFrac = float64(rejected) / float64(n)
	r.PeakLoadRatio = float64(srv.peak(100*time.Millisecond)) / (o.capacity / 10)
	if attempts > 0 {
		r.RedisOpsPerAdmission = float64(calls) / float64(attempts)
	}
	return r
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
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

// peak is the most arrivals in any window.
func (s *server) peak(window time.Duration) int {
	s.mu.Lock()
	at := slices.Clone(s.at)
	s.mu.Unlock()
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range at {
		for at[i].Sub(at[j]) >= window {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// workers are the worker processes of one herd.
type workers struct {
	cmds []*exec.Cmd
	ins  []io.WriteCloser
	outs []*bufio.Reader
}

// startWorkers starts the processes and waits until each has joined.
func startWorkers(o *options, strategy, addr, key string) (*workers, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ws := &workers{}
	for i := range o.procs {
		cmd := exec.Command(exe, "-worker", strategy, "-id", strconv.Itoa(i), "-server", addr,
			"-redis", o.redis, "-fleet-key", key, "-trunks", strconv.Itoa(o.trunks),
			"-capacity", strconv.FormatFloat(o.capacity, 'g', -1, 64), "-retry-after", o.retryAfter.String(),
			"-timeout", o.timeout.String())
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			return ws, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return ws, err
		}
		if err := cmd.Start(); err != nil {
			ws.kill()
			return nil, err
		}
		ws.cmds, ws.ins, ws.outs = append(ws.cmds, cmd), append(ws.ins, in), append(ws.outs, bufio.NewReader(out))
	}
	for i, r := range ws.outs {
		if line, err := r.ReadString('\n'); err != nil || line != "ready\n" {
			ws.kill()
			return nil, fmt.Errorf("worker %d said %q: %w", i, line, err)
		}
	}
	return ws, nil
}

// run tells every worker to go and collects their reports.
func (ws *workers) run(timeout time.Duration) []workerReport {
	for _, in := range ws.ins {
		_, _ = io.WriteString(in, "go\n")
	}
	reports := make(chan workerReport, len(ws.outs))
	for _, r := range ws.outs {
		go func() {
			var w workerReport
			if line, err := r.ReadString('\n'); err == nil && json.Unmarshal([]byte(line), &w) == nil {
				reports <- w
				return
			}
			reports <- workerReport{Stuck: -1}
		}()
	}
	var out []workerReport
	deadline := time.NewTimer(timeout + 5*time.Second)
	defer deadline.Stop()
	for range ws.outs {
		select {
		case w := <-reports:
			if w.Stuck >= 0 {
				out = append(out, w)
			}
		case <-deadline.C:
			return out
		}
	}
	return out
}

func (ws *workers) kill() {
	for _, c := range ws.cmds {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
}
