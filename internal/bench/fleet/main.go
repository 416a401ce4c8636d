// Command fleet measures fleet-wide admission with operating-system
// processes and real SIP: P gateway processes of T trunks each, every
// process one sip.Fleet whose registrar gate is local or shared through
// Redis (backoff/fleetgate), recover together towards one registrar that
// serves C REGISTER/s counted per 100 ms window and answers the excess at
// once with 503 and Retry-After.
//
//	go run ./internal/bench/fleet -procs 50 -trunks 40 -capacity 200 -json
//	go run ./internal/bench/fleet -strategy shared -procs 10 -trunks 20 -capacity 50
//	go run ./internal/bench/fleet -redis 127.0.0.1:6379   # a Redis of yours
//
// Each strategy runs on a fresh registrar: the P worker processes start and
// register their trunks (the registrar unlimited, or already at C for the
// two strategies that keep a learned pace), the registrar is limited to C,
// the path to it is black-holed for -hole (5 s, longer than the trunks'
// detection bound -keepalive + -keepalive-timeout, 3 s, so that every
// trunk's flow dies and every trunk must register again), then restored.
// The clock starts at the restore and stops when the last trunk is
// registered again.
//
// The registrar (-registrar, the JSON's registrar field):
//   - kamailio: Debian's Kamailio in one network namespace and the workers
//     in another (internal/netns, root with ip and nft); the black hole is
//     nft DROP of the SIP port both ways; REGISTERs are counted as they
//     arrive on Kamailio's interface (an AF_PACKET socket), 503s by
//     Kamailio's counters.
//   - embedded: the in-process registrar behind sip/siptest, on loopback,
//     counting per 100 ms window as Kamailio does; the black hole is its
//     silent mode (nothing answered, connections open), and the restore
//     closes the connections it accepted and answers again.
//   - auto (the default): kamailio when network namespaces and Kamailio
//     are available, embedded otherwise.
//
// Strategies (-strategies, comma-separated, or -strategy for one; -runs
// repeats the list): local
// (each process its own adaptive gate), local-rate (each told C), shared
// (one fleet gate on Redis, learning C), shared-rate (told C),
// shared-second-herd (new processes on the fleet of the last shared herd,
// the learned pace kept in Redis) and shared-redis-down (the same, Redis
// killed at the restore: every process on its share of the last known
// pace).
//
// Without -redis it starts redis-server (Debian's) on a free port, in the
// workers' namespace when Kamailio runs in one. -server window keeps the
// earlier, faster mode: no SIP, each process's clients admitted by the gate
// towards a UDP "window server" in this process, clock from the start.
//
// With -json the program prints one JSON object per strategy and line:
// strategy, procs, trunks, capacity, registrar, recover_s, ratio_to_limit
// (recover_s ÷ N/C), rejected_frac (503s ÷ N), peak_load_ratio (the largest
// 100 ms sliding window of REGISTER arrivals at the registrar ÷ C/10),
// redis_ops_per_admission (median over the processes of Redis calls ÷ gate
// admissions), max_redis_wait_ms (the slowest Redis call), stuck (trunks not
// registered again by -timeout), and details: hole_s, first_s (the first
// trunk back), undetected (trunks that never lost their registration),
// server_registers_per_trunk (REGISTERs at the registrar from the restore ÷
// N) and load1 (the machine's load average: P processes share its cores).
//
// -trace prints to stderr, per strategy, the REGISTERs per 100 ms window
// aligned on the clock (as Kamailio counts them) from the restore, the
// busiest sliding 100 ms (the peak) and where it lies, and worker 0's view
// of the fleet pace: each version it saw (pace, estimate, startup, ceiling)
// and each fleet-wide pause, timed from the restore.
//
// RELINK_FLEET_DEBUG=1 prints each worker's gate at the end;
// RELINK_FLEET_LOG=1 prints every Redis call that proposes or learns a pace.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

// workerEnv set to "1" makes the program a worker process (so that a test
// binary can run its own workers).
const workerEnv = "RELINK_FLEET_WORKER"

// strategies, in the order a full run takes them.
var allStrategies = []string{"local", "local-rate", "shared", "shared-rate", "shared-second-herd", "shared-redis-down"}

// Result is one strategy's figures; -json prints one per line.
type Result struct {
	Strategy             string  `json:"strategy"`
	Procs                int     `json:"procs"`
	Trunks               int     `json:"trunks"`
	Capacity             float64 `json:"capacity"`
	Registrar            string  `json:"registrar"`
	RecoverS             float64 `json:"recover_s"`
	RatioToLimit         float64 `json:"ratio_to_limit"`
	RejectedFrac         float64 `json:"rejected_frac"`
	PeakLoadRatio        float64 `json:"peak_load_ratio"`
	RedisOpsPerAdmission float64 `json:"redis_ops_per_admission"`
	MaxRedisWaitMs       float64 `json:"max_redis_wait_ms"`
	Stuck                int     `json:"stuck"`

	// Details.
	HoleS          float64 `json:"hole_s,omitempty"`
	FirstS         float64 `json:"first_s,omitempty"`                    // the first trunk registered again, from the restore
	Undetected     int     `json:"undetected"`                           // trunks still registered after the hole
	ServerPerTrunk float64 `json:"server_registers_per_trunk,omitempty"` // REGISTERs at the registrar from the restore ÷ N
	// Load1 is the machine's 1-minute load average at the end of the
	// herd (Linux; 0 elsewhere): P processes share its cores with
	// whatever else runs, and a loaded machine stretches every figure.
	Load1 float64 `json:"load1"`
}

// options are the flags, shared by the parent and its workers.
type options struct {
	procs, trunks int
	runs          int
	capacity      float64
	retryAfter    time.Duration
	hole          time.Duration
	keepAlive     time.Duration
	kaTimeout     time.Duration
	timeout       time.Duration
	redis         string
	jsonOut       bool
	trace         bool
	strategies    []string
	server        string // "sip" or "window"
	registrar     string // "auto", "kamailio" or "embedded"
	// worker only
	worker   string // the strategy
	id       int
	target   string // the registrar's or window server's host:port
	fleetKey string // the Redis key prefix of the fleet
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err == nil {
		if os.Getenv(workerEnv) == "1" {
			err = runWorker(o)
		} else {
			err = run(o, func(r Result) { report(o, r) })
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	var o options
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.IntVar(&o.procs, "procs", 50, "worker processes")
	fs.IntVar(&o.runs, "runs", 1, "run the strategies this many times (one result each)")
	fs.IntVar(&o.trunks, "trunks", 40, "trunks (clients) per process")
	fs.Float64Var(&o.capacity, "capacity", 200, "REGISTERs per second the registrar serves, counted per 100 ms")
	fs.DurationVar(&o.retryAfter, "retry-after", time.Second, "Retry-After of each 503 (whole seconds)")
	fs.DurationVar(&o.hole, "hole", 5*time.Second, "how long the path stays black-holed")
	fs.DurationVar(&o.keepAlive, "keepalive", time.Second, "sip.TrunkConfig.KeepAlive (CRLF ping after this much silence)")
	fs.DurationVar(&o.kaTimeout, "keepalive-timeout", 2*time.Second, "sip.TrunkConfig.KeepAliveTimeout (no pong within it: the flow is dead)")
	fs.DurationVar(&o.timeout, "timeout", time.Minute, "trunks not registered again this long after the restore are stuck")
	fs.StringVar(&o.redis, "redis", "", "host:port of a Redis to use, reachable from the workers (default: start redis-server)")
	fs.BoolVar(&o.jsonOut, "json", false, "one JSON object per strategy")
	fs.BoolVar(&o.trace, "trace", false, "print per-window arrivals, the peak's window and worker 0's fleet pace to stderr")
	list := fs.String("strategies", strings.Join(allStrategies, ","), "strategies to run, in order")
	one := fs.String("strategy", "", "run this strategy only (overrides -strategies)")
	fs.StringVar(&o.server, "server", "sip", "sip (real SIP trunks and registrar) or window (the gate alone against a UDP window server)")
	fs.StringVar(&o.registrar, "registrar", "auto", "auto, kamailio (network namespaces, root) or embedded")
	fs.StringVar(&o.worker, "worker", "", "internal: the worker's strategy")
	fs.IntVar(&o.id, "id", 0, "internal: the worker's number")
	fs.StringVar(&o.target, "target", "", "internal: the server's host:port")
	fs.StringVar(&o.fleetKey, "fleet-key", "", "internal: the fleet's Redis key prefix")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *one != "" {
		*list = *one
	}
	for _, s := range strings.Split(*list, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.strategies = append(o.strategies, s)
		}
	}
	return &o, o.validate()
}

func (o *options) validate() error {
	switch {
	case o.procs <= 0 || o.trunks <= 0 || o.runs <= 0:
		return errors.New("-procs, -trunks and -runs must be positive")
	case !(o.capacity > 0):
		return errors.New("-capacity must be positive")
	case o.hole <= 0 || o.keepAlive <= 0 || o.kaTimeout <= 0 || o.timeout <= 0:
		return errors.New("-hole, -keepalive, -keepalive-timeout and -timeout must be positive")
	case o.server != "sip" && o.server != "window":
		return fmt.Errorf("unknown -server %q (want sip or window)", o.server)
	case o.registrar != "auto" && o.registrar != "kamailio" && o.registrar != "embedded":
		return fmt.Errorf("unknown -registrar %q (want auto, kamailio or embedded)", o.registrar)
	case len(o.strategies) == 0:
		return errors.New("no strategy")
	}
	for _, s := range o.strategies {
		if !isStrategy(s) {
			return fmt.Errorf("unknown strategy %q (want %s)", s, strings.Join(allStrategies, ", "))
		}
	}
	return nil
}

func isStrategy(s string) bool {
	for _, a := range allStrategies {
		if s == a {
			return true
		}
	}
	return false
}

// shared reports whether a strategy's gates share admission through Redis.
func shared(strategy string) bool { return strings.HasPrefix(strategy, "shared") }

// told reports whether a strategy's gates are told C (GateConfig.Rate).
func told(strategy string) bool { return strings.HasSuffix(strategy, "-rate") }

// keeps reports whether a strategy recovers towards the fleet of the last
// shared herd, with what it learned.
func keeps(strategy string) bool {
	return strategy == "shared-second-herd" || strategy == "shared-redis-down"
}

func report(o *options, r Result) {
	if o.jsonOut {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%-19s %d×%d C=%v %s: %.2f × N/C (%.2f s), %.1f %% rejected, peak %.2f, %.2f Redis ops/admission, max Redis wait %.1f ms, stuck %d\n",
		r.Strategy, r.Procs, r.Trunks, r.Capacity, r.Registrar, r.RatioToLimit, r.RecoverS, 100*r.RejectedFrac,
		r.PeakLoadRatio, r.RedisOpsPerAdmission, r.MaxRedisWaitMs, r.Stuck)
}
