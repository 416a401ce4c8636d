// Command siprecovery measures how N SIP trunks regain their registrations
// after an outage, against a real Kamailio registrar that serves at most C
// REGISTERs per second (all of them, with or without credentials) and answers
// the excess with 503 and a Retry-After.
//
//	go run ./internal/bench/siprecovery                   # N = 2000, C = 200/s
//	go run ./internal/bench/siprecovery -n 500 -capacity 100 -json
//
// For each strategy, one after the other, on a fresh Kamailio: the N trunks
// register (the rate limit off), the rate limit is set to C, the path to the
// registrar is black-holed for longer than the detection bound (keepalive +
// timeout), then restored. The clock starts at the restore and stops when the
// last trunk is registered again, or at -cap.
//
// Strategies:
//   - relink: N sip.Trunks on one sip.Fleet with its default gate, which
//     learns the rate the registrar accepts.
//   - relink-rate: the same, the fleet's gate told C (GateConfig.Rate).
//
// Baselines, what a user would run instead of relink (sipgo's own UserAgent
// and Client with their defaults, REGISTER with digest, a fresh challenge
// every time). None of them can see a silent flow, so each is told that its
// registrations are lost at the moment relink's bound says relink notices
// (cut + keepalive + timeout), to compare the recoveries alone; each is then
// watched at least as long as its own retry timers need (-baseline-cap):
//   - diago: diago v0.42.1's (*Diago).Register loop (refresh at 0.75 ×
//     Expires; after a timeout or transport error, again after
//     int(0.75 × (Retry-After or 5 s)) s; a 401/407/501–599, so a 503, ends
//     Register, and the application calls it again after -diago-restart).
//     Reimplemented in baselines.go, citing diago's files and functions.
//   - pjsip-like: Asterisk's res_pjsip_outbound_registration defaults
//     (retry_interval 60 s, max_retries 10, Retry-After honoured per trunk)
//     with pjsua's random spread (reg_retry_random_interval, 10 s); flags
//     -pjsip-retry and -pjsip-spread.
//   - baresip: baresip 1.0 (Debian baresip-core) as a real client, one
//     process with the N trunks as accounts, its own config directory made
//     by the bench, in the client namespace; told of the loss through its
//     control socket (uareg). See baresip.go.
//   - naive-worst-case ("naive" is accepted too): on any failure (503
//     included, its Retry-After ignored, or a timeout) a new REGISTER at
//     once. No real stack does this: it is the worst case, kept as such.
//
// Path methods: "netns" (root, Linux, ip and nft installed): Kamailio runs in
// one network namespace and the trunks in another, and internal/netns drops
// the SIP port's packets both ways with nft (a real black hole). The sockets
// sipgo dials belong to the namespace of the thread that creates them, and a
// sip.Fleet starts its own goroutines, so the whole measuring process must be
// in the client namespace: the program creates the namespaces, re-runs itself
// under `ip netns exec CLIENT` and applies the black hole for it when asked
// over a pipe. "proxy": the freeze proxy of internal/faultproxy in front of
// Kamailio on loopback, frozen at the cut and ended with Forget at the restore
// (the old connections stay silent for ever, new ones are forwarded).
// "auto" (the default) picks netns when it can.
//
// With -json the program prints one JSON object per strategy and line:
// strategy, n, capacity, recover_s, ratio_to_limit (recover_s ÷ N/C),
// rejected_frac (503s ÷ N), transactions_per_trunk (REGISTER transactions
// sent from the cut to the end ÷ N), stuck (trunks not registered again by
// the cap), bound_s, and details; a baseline's row also has model (what it
// reimplements or runs, with its parameters), cap_s (how long it was watched
// after the restore) and gave_up (how often the stack gave a registration
// up). For baresip, transactions_per_trunk is counted at Kamailio. The goal at N = 2000, C = 200/s: relink
// within 1.3 × N/C with 503s ≤ 5 % of N, relink-rate within 1.15 × N/C with
// 503s ≤ 2 %, every trunk recovered. The exit status is 1 when a relink
// strategy left a trunk unrecovered, 2 on a setup error.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

// workerEnv carries the server namespace's name to the copy of the program
// that runs in the client namespace.
const workerEnv = "RELINK_SIPRECOVERY_SERVER_NS"

// Result is one strategy's figures; -json prints one per line.
type Result struct {
	Strategy             string  `json:"strategy"`
	N                    int     `json:"n"`
	Capacity             float64 `json:"capacity"`
	RecoverS             float64 `json:"recover_s"`
	RatioToLimit         float64 `json:"ratio_to_limit"`
	RejectedFrac         float64 `json:"rejected_frac"`
	TransactionsPerTrunk float64 `json:"transactions_per_trunk"`
	Stuck                int     `json:"stuck"`
	BoundS               float64 `json:"bound_s"`

	// Details.
	Method         string  `json:"method"`
	RetryAfterS    float64 `json:"retry_after_s"`
	HoleS          float64 `json:"hole_s"`
	DetectMaxS     float64 `json:"detect_max_s"`               // slowest loss noticed, from the cut
	Undetected     int     `json:"undetected"`                 // trunks still registered at the restore
	FirstS         float64 `json:"first_s"`                    // first trunk registered again, from the restore
	HalfS          float64 `json:"half_s"`                     // half of them
	ServerPerTrunk float64 `json:"server_registers_per_trunk"` // REGISTERs Kamailio received ÷ N
	// The registrar gate at the restore (relink strategies): its state and
	// the REGISTERs it had admitted that were still in flight.
	GateAtRestore     string `json:"gate_at_restore,omitempty"`
	InFlightAtRestore int    `json:"in_flight_at_restore"`
	// Baselines: what the row models, how long it was watched after the
	// restore, and how often the stack gave a registration up (diago's
	// Register returned, Asterisk's max_retries, baresip's account failed).
	Model  string  `json:"model,omitempty"`
	CapS   float64 `json:"cap_s"`
	GaveUp int     `json:"gave_up"`
}

// options are the command's flags.
type options struct {
	n          int
	capacity   float64
	keepAlive  time.Duration
	timeout    time.Duration
	retryAfter time.Duration
	hole       time.Duration // 0: bound + 2 s
	reqTimeout time.Duration // sip.TrunkConfig.RequestTimeout; 0: sip's default
	capAfter   time.Duration
	// Baselines.
	baselineCap  time.Duration // 0: the baseline's own horizon (at least capAfter)
	diagoRestart time.Duration
	pjsipRetry   time.Duration
	pjsipSpread  time.Duration
	baresip      string
	method       string
	strategies   []string
	trace        time.Duration // timeline interval; 0: none
}

func (o *options) bound() time.Duration { return o.keepAlive + o.timeout }

func (o *options) holeFor() time.Duration {
	if o.hole > 0 {
		return o.hole
	}
	return o.bound() + 2*time.Second
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 2000, "trunks")
	flag.Float64Var(&o.capacity, "capacity", 200, "REGISTERs per second Kamailio admits; the excess gets 503")
	flag.DurationVar(&o.keepAlive, "keepalive", time.Second, "sip.TrunkConfig.KeepAlive (CRLF ping interval)")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Second, "sip.TrunkConfig.KeepAliveTimeout (no pong within it: the flow is dead)")
	flag.DurationVar(&o.retryAfter, "retry-after", time.Second, "Retry-After of Kamailio's 503s (whole seconds)")
	flag.DurationVar(&o.hole, "hole", 0, "how long the path stays black-holed (0: bound + 2 s)")
	flag.DurationVar(&o.reqTimeout, "request-timeout", 0, "sip.TrunkConfig.RequestTimeout of relink's trunks (0: sip.DefaultRequestTimeout, 32 s)")
	flag.DurationVar(&o.capAfter, "cap", 60*time.Second, "give up on a strategy this long after the restore")
	flag.StringVar(&o.method, "method", "auto", "auto, netns (network namespaces + nft DROP; root) or proxy (freeze proxy)")
	flag.DurationVar(&o.baselineCap, "baseline-cap", 0, "give up on a baseline this long after the restore (0: -cap, or longer when its own retry timers need it)")
	flag.DurationVar(&o.diagoRestart, "diago-restart", 5*time.Second, "diago: the application calls Register again this long after it returned")
	flag.DurationVar(&o.pjsipRetry, "pjsip-retry", 60*time.Second, "pjsip-like: retry interval without Retry-After (Asterisk retry_interval)")
	flag.DurationVar(&o.pjsipSpread, "pjsip-spread", 10*time.Second, "pjsip-like: random spread added to each retry (pjsua reg_retry_random_interval)")
	flag.StringVar(&o.baresip, "baresip", "baresip", "baresip: the baresip executable")
	only := flag.String("strategies", strings.Join(allStrategies, ","), "comma-separated strategies to run, in order")
	asJSON := flag.Bool("json", false, "print one JSON object per strategy and line")
	flag.DurationVar(&o.trace, "trace", 0, "print a timeline of each recovery at this interval (e.g. 500ms; 0: none)")
	verbose := flag.Bool("v", false, "show sipgo's and Kamailio harness warnings")
	flag.Parse()
	for _, s := range strings.Split(*only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.strategies = append(o.strategies, s)
		}
	}
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		os.Exit(2)
	}
	level := slog.LevelError + 4 // sipgo logs every failed request; quiet unless -v
	if *verbose {
		level = slog.LevelWarn
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))

	serverNS := os.Getenv(workerEnv)
	method, why := o.method, "chosen with -method"
	if serverNS != "" {
		method = "netns"
	} else if method == "auto" {
		if err := netns.Available(); err != nil {
			method, why = "proxy", fmt.Sprintf("network namespaces unavailable: %v", err)
		} else {
			method, why = "netns", "running as root with ip and nft"
		}
	}
	if method == "netns" && serverNS == "" {
		// Re-run in the client namespace; this process holds the namespaces.
		os.Exit(parent(os.Args[1:], nil))
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var e *env
	var err error
	if method == "netns" {
		e, err = workerEnvFromPipes(serverNS)
		why = os.Getenv(workerEnv + "_WHY")
	} else {
		e = &env{method: "proxy"}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		os.Exit(2)
	}
	e.why = why
	logf := func(format string, args ...any) {
		if !*asJSON {
			fmt.Printf(format, args...)
		}
	}
	status, err := run(ctx, &o, e, logf, func(r Result) {
		if *asJSON {
			out, _ := json.Marshal(r)
			fmt.Println(string(out))
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		os.Exit(2)
	}
	os.Exit(status)
}

func (o *options) validate() error {
	switch {
	case o.n <= 0:
		return errors.New("-n must be positive")
	case !(o.capacity > 0):
		return errors.New("-capacity must be positive")
	case o.keepAlive <= 0 || o.timeout <= 0:
		return errors.New("-keepalive and -timeout must be positive")
	case o.capAfter <= 0 || o.hole < 0 || o.reqTimeout < 0:
		return errors.New("-cap must be positive, -hole and -request-timeout non-negative")
	}
	switch o.method {
	case "auto", "netns", "proxy":
	default:
		return fmt.Errorf("unknown -method %q (want auto, netns or proxy)", o.method)
	}
	if len(o.strategies) == 0 {
		return errors.New("no strategy")
	}
	for i, s := range o.strategies {
		if s == "naive" {
			o.strategies[i] = naiveWorst
			continue
		}
		if !slices.Contains(allStrategies, s) {
			return fmt.Errorf("%w %q (want %s)", errUnknownStrategy, s, strings.Join(allStrategies, ", "))
		}
	}
	return nil
}

// parent creates the two namespaces, runs this program again in the client
// namespace with args (and extraEnv), and black-holes or restores the SIP
// port when it asks (one line per request on fd 3, one reply per line on
// fd 4). It returns the exit status.
func parent(args, extraEnv []string) int {
	p, err := netns.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		return 2
	}
	defer p.Close()
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		return 2
	}
	reqR, reqW, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		return 2
	}
	repR, repW, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		return 2
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.Client().Name(), exe}, args...)...)
	cmd.Env = append(os.Environ(), workerEnv+"="+p.Server().Name(),
		workerEnv+"_WHY="+"running as root with ip and nft")
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{reqW, repR} // fd 3: requests; fd 4: replies
	// The child gets ^C from the terminal as we do; we wait for it to
	// clean up, then delete the namespaces.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
		return 2
	}
	reqW.Close()
	repR.Close()
	exited := make(chan struct{})
	defer close(exited)
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == syscall.SIGTERM {
					_ = cmd.Process.Signal(s)
				}
			case <-exited:
				return
			}
		}
	}()
	h := &holes{p: p}
	served := make(chan struct{})
	go func() {
		defer close(served)
		defer repW.Close()
		h.serve(reqR, repW)
	}()
	werr := cmd.Wait()
	reqR.Close()
	<-served
	if err := h.restore(); err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", err)
	}
	if ee, ok := errors.AsType[*exec.ExitError](werr); ok {
		if code := ee.ExitCode(); code >= 0 {
			return code
		}
		return 2
	}
	if werr != nil {
		fmt.Fprintln(os.Stderr, "siprecovery:", werr)
		return 2
	}
	return 0
}

// holes applies the child's requests to black-hole and restore ports.
type holes struct {
	p        *netns.Pair
	restores []func() error
}

// serve answers each request line read from r ("hole PORT", "restore") with
// one line on w: "ok" or "err why".
func (h *holes) serve(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		verb, arg, _ := strings.Cut(sc.Text(), " ")
		var err error
		switch verb {
		case "hole":
			err = h.hole(arg)
		case "restore":
			err = h.restore()
		default:
			err = fmt.Errorf("unknown request %q", verb)
		}
		reply := "ok"
		if err != nil {
			reply = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		if _, werr := fmt.Fprintln(w, reply); werr != nil {
			return
		}
	}
}

func (h *holes) hole(port string) error {
	n, err := strconv.Atoi(port)
	if err != nil {
		return err
	}
	restore, err := h.p.BlackHole(n)
	if err == nil {
		h.restores = append(h.restores, restore)
	}
	return err
}

// restore removes every black hole.
func (h *holes) restore() error {
	var err error
	for _, r := range h.restores {
		err = errors.Join(err, r())
	}
	h.restores = nil
	return err
}

// env is where the strategies run: how to start a registrar and cut its path.
type env struct {
	method, why string
	serverNS    string
	ctl         *remote // netns: the parent that applies nft rules
}

// remote asks the parent process to black-hole or restore a port.
type remote struct {
	mu sync.Mutex
	w  io.Writer
	r  *bufio.Reader
}

func (r *remote) call(req string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := fmt.Fprintln(r.w, req); err != nil {
		return fmt.Errorf("ask the parent to %s: %w", req, err)
	}
	line, err := r.r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("ask the parent to %s: %w", req, err)
	}
	line = strings.TrimSpace(line)
	if line != "ok" {
		return fmt.Errorf("parent: %s: %s", req, strings.TrimPrefix(line, "err "))
	}
	return nil
}

func workerEnvFromPipes(serverNS string) (*env, error) {
	w, r := os.NewFile(3, "requests"), os.NewFile(4, "replies")
	if w == nil || r == nil {
		return nil, errors.New("no control pipes from the parent process")
	}
	return &env{method: "netns", serverNS: serverNS, ctl: &remote{w: w, r: bufio.NewReader(r)}}, nil
}

// site is one Kamailio and the path to it.
type site struct {
	k       *kamailio.Instance
	uri     string // what the trunks register with
	cut     func() error
	restore func() error
	close   func()
}

func (e *env) newSite(ctx context.Context, o *options) (*site, error) {
	ko := kamailio.Options{RetryAfter: o.retryAfter, TCPLifetime: time.Hour,
		StartTimeout: 20 * time.Second}
	if o.retryAfter <= 0 {
		ko.RetryAfter = -1
	}
	switch e.method {
	case "netns":
		ko.Netns = e.serverNS
		ko.Addr = net.JoinHostPort(netns.ServerIP.String(), "0")
		k, err := kamailio.Launch(ctx, ko)
		if err != nil {
			return nil, err
		}
		_, port, _ := net.SplitHostPort(k.Addr())
		return &site{k: k, uri: k.URI(),
			cut:     func() error { return e.ctl.call("hole " + port) },
			restore: func() error { return e.ctl.call("restore") },
			close:   func() { _ = e.ctl.call("restore"); _ = k.Stop() },
		}, nil
	default:
		k, err := kamailio.Launch(ctx, ko)
		if err != nil {
			return nil, err
		}
		px, err := faultproxy.New(k.Addr())
		if err != nil {
			_ = k.Stop()
			return nil, err
		}
		return &site{k: k, uri: "sip:" + px.Addr() + ";transport=tcp",
			cut:     func() error { px.Freeze(); return nil },
			restore: func() error { px.Forget(); return nil },
			close:   func() { px.Close(); _ = k.Stop() },
		}, nil
	}
}

// run runs every strategy and reports each result; the status is 1 when a
// relink strategy left trunks unrecovered.
func run(ctx context.Context, o *options, e *env, logf func(string, ...any), report func(Result)) (int, error) {
	if _, err := testkit.RaiseFileLimit(uint64(2*o.n + 1024)); err != nil {
		return 0, err
	}
	printHeader(o, e, logf)
	status := 0
	var rows []Result
	for i, s := range o.strategies {
		if i > 0 {
			runtime.GC()
			time.Sleep(500 * time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		r, err := runStrategy(ctx, o, e, s, logf)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", s, err)
		}
		rows = append(rows, r)
		report(r)
		if r.Stuck > 0 && isRelink(s) {
			status = 1
		}
	}
	printTable(rows, logf)
	return status, nil
}

// printHeader says what the run measures and how.
func printHeader(o *options, e *env, logf func(string, ...any)) {
	limit := float64(o.n) / o.capacity
	logf("siprecovery: N=%d trunks, Kamailio admits C=%.0f REGISTERs/s (windows of 100 ms; beyond: 503", o.n, o.capacity)
	if o.retryAfter > 0 {
		logf(" + Retry-After: %d s", int(math.Ceil(o.retryAfter.Seconds())))
	}
	logf("); physical limit N/C = %.2f s\n", limit)
	switch e.method {
	case "netns":
		logf("method: netns — Kamailio in one network namespace, the trunks in another, nft DROP on the SIP port both ways (%s)\n", e.why)
	default:
		logf("method: proxy — freeze proxy in front of Kamailio on loopback; restore = Forget (old connections silent for ever) (%s)\n", e.why)
	}
	logf("detection: keepalive %v + timeout %v = bound %v; black hole %v; each strategy capped %v after the restore\n\n",
		o.keepAlive, o.timeout, o.bound(), o.holeFor(), o.capAfter)
}

// printTable prints every strategy's figures and the goals' verdicts.
func printTable(rows []Result, logf func(string, ...any)) {
	logf("\n%-16s %9s %9s %7s %8s %10s %10s %6s %9s %7s\n",
		"strategy", "recovered", "time (s)", "× N/C", "503s/N", "REG/trunk", "srv REG/N", "stuck", "detect", "bound")
	for _, r := range rows {
		t := fmt.Sprintf("%.2f", r.RecoverS)
		if r.Stuck > 0 {
			t = ">" + fmt.Sprintf("%.0f", r.RecoverS)
		}
		det := fmt.Sprintf("%.2fs", r.DetectMaxS)
		if !isRelink(r.Strategy) {
			det = "told"
		}
		logf("%-16s %9d %9s %7.2f %7.1f%% %10.2f %10.2f %6d %9s %6.1fs\n", r.Strategy, r.N-r.Stuck, t,
			r.RatioToLimit, 100*r.RejectedFrac, r.TransactionsPerTrunk, r.ServerPerTrunk, r.Stuck, det, r.BoundS)
	}
	logf("goal (N=2000, C=200/s): relink ≤ 1.30 × N/C with 503s ≤ 5%% of N; relink-rate ≤ 1.15 × N/C with 503s ≤ 2%%; nobody stuck\n")
	for _, r := range rows {
		var goalT, goalR float64
		switch r.Strategy {
		case "relink":
			goalT, goalR = 1.3, 0.05
		case "relink-rate":
			goalT, goalR = 1.15, 0.02
		default:
			continue
		}
		verdict := "met"
		if r.Stuck > 0 || r.RatioToLimit > goalT || r.RejectedFrac > goalR {
			verdict = "NOT met"
		}
		logf("  %-16s %s\n", r.Strategy+":", verdict)
	}
}

// trunkTrack records when one trunk lost its registration after the cut and
// when it had it again (unix nanoseconds, 0: not yet).
type trunkTrack struct {
	lostAt, backAt atomic.Int64
}

// recorder collects the trunks' losses and recoveries.
type recorder struct {
	cutAt     atomic.Int64
	tracks    []trunkTrack
	recovered atomic.Int64
	all       chan struct{}
	allOnce   sync.Once
}

func newRecorder(n int) *recorder {
	return &recorder{tracks: make([]trunkTrack, n), all: make(chan struct{})}
}

func (r *recorder) lost(i int, at time.Time) {
	if r.cutAt.Load() == 0 {
		return
	}
	r.tracks[i].lostAt.CompareAndSwap(0, at.UnixNano())
}

func (r *recorder) back(i int, at time.Time) {
	tr := &r.tracks[i]
	if r.cutAt.Load() == 0 || tr.lostAt.Load() == 0 {
		return
	}
	if tr.backAt.CompareAndSwap(0, at.UnixNano()) {
		if r.recovered.Add(1) == int64(len(r.tracks)) {
			r.allOnce.Do(func() { close(r.all) })
		}
	}
}

// clients is one strategy's trunks.
type clients interface {
	// start registers every trunk and returns when all are registered.
	start(ctx context.Context) error
	// lose tells clients that cannot notice a dead path that their
	// registrations are lost (naive); relink's trunks notice by themselves.
	lose()
	// transactions is the number of REGISTER transactions sent so far.
	transactions() uint64
	// registered counts the trunks registered now.
	registered() int
	// trace returns a short description of the client side for -trace.
	trace() string
	// gate returns the registrar gate's state and admitted attempts in
	// flight ("" for clients without a gate).
	gate() (string, int)
	// stop ends everything.
	stop()
}

// trial is one strategy's run on a fresh Kamailio.
type trial struct {
	o          *options
	strategy   string
	logf       func(string, ...any)
	res        Result
	s          *site
	rec        *recorder
	cl         clients
	loseT      *time.Timer // tells the naive clients at cut + bound
	setupAt    time.Time
	tx0        uint64 // REGISTER transactions before the cut
	cutAt      time.Time
	restoreAt  time.Time
	undetected int // trunks still registered at the restore
}

// runStrategy measures one strategy: setup (Kamailio, the path, N trunks
// registered) → warm-up (pings, then the rate limit on) → fault (the path
// black-holed) → restore (until every trunk is back, or the cap) → report.
func runStrategy(ctx context.Context, o *options, e *env, strategy string, logf func(string, ...any)) (Result, error) {
	t := &trial{o: o, strategy: strategy, logf: logf, rec: newRecorder(o.n),
		res: Result{Strategy: strategy, N: o.n, Capacity: o.capacity, BoundS: o.bound().Seconds(),
			Method: e.method, HoleS: o.holeFor().Seconds()}}
	if o.retryAfter > 0 {
		t.res.RetryAfterS = math.Ceil(o.retryAfter.Seconds())
	}
	defer t.close()
	if err := t.setup(ctx, e); err != nil {
		return t.res, err
	}
	if err := t.warmUp(ctx); err != nil {
		return t.res, err
	}
	if err := t.fault(ctx); err != nil {
		return t.res, err
	}
	if err := t.restore(ctx); err != nil {
		return t.res, err
	}
	return t.report()
}

// close stops the clients, then Kamailio and the path.
func (t *trial) close() {
	if t.loseT != nil {
		t.loseT.Stop()
	}
	if t.cl != nil {
		t.cl.stop()
	}
	if t.s != nil {
		t.s.close()
	}
}

// setup starts Kamailio behind its path and the strategy's N trunks, and
// waits until they are all registered.
func (t *trial) setup(ctx context.Context, e *env) error {
	o := t.o
	var err error
	if t.s, err = e.newSite(ctx, o); err != nil {
		return err
	}
	switch t.strategy {
	case "baresip":
		t.res.Model = baresipModel
		t.cl, err = newBaresip(o, t.s, t.rec)
	case naiveWorst, "diago", "pjsip-like":
		pol := o.policy(t.strategy)
		t.res.Model = pol.model()
		t.cl, err = newBaseline(o, t.s, t.rec, pol)
	default:
		var gc backoff.GateConfig
		if t.strategy == "relink-rate" {
			gc.Rate = o.capacity
		}
		t.cl, err = newRelink(o, t.s, t.rec, gc)
	}
	if err != nil {
		t.cl = nil
		return err
	}
	t.setupAt = time.Now()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second+time.Duration(o.n)*10*time.Millisecond)
	err = t.cl.start(sctx)
	cancel()
	if err != nil {
		return fmt.Errorf("initial registration: %w", err)
	}
	return nil
}

// warmUp lets the flow carry a few pings and pongs, then turns the rate
// limit on with fresh counters.
func (t *trial) warmUp(ctx context.Context) error {
	if !ctxtime.Sleep(ctx, t.o.keepAlive+t.o.keepAlive/2) {
		return ctx.Err()
	}
	if err := t.s.k.SetRate(t.o.capacity); err != nil {
		return err
	}
	if err := t.s.k.ResetStats(); err != nil {
		return err
	}
	t.logf("%-16s %d trunks registered in %v; rate limit on; cutting the path\n", t.strategy, t.o.n,
		time.Since(t.setupAt).Round(time.Millisecond))
	return nil
}

// fault black-holes the path for the hole's length; the naive clients are
// told of the loss at cut + bound, when relink's trunks notice it.
func (t *trial) fault(ctx context.Context) error {
	t.tx0 = t.cl.transactions()
	t.cutAt = time.Now()
	t.rec.cutAt.Store(t.cutAt.UnixNano())
	if err := t.s.cut(); err != nil {
		return err
	}
	t.loseT = time.AfterFunc(t.o.bound(), t.cl.lose)
	if !ctxtime.Sleep(ctx, t.o.holeFor()) {
		return ctx.Err()
	}
	t.undetected = t.o.n - int(countLost(t.rec))
	t.res.GateAtRestore, t.res.InFlightAtRestore = t.cl.gate()
	return nil
}

// restore restores the path and waits for every trunk, or the cap; with
// -trace it prints a line at each interval.
func (t *trial) restore(ctx context.Context) error {
	if err := t.s.restore(); err != nil {
		return err
	}
	t.restoreAt = time.Now()
	capT := time.NewTimer(t.o.capFor(t.strategy))
	defer capT.Stop()
	var tickC <-chan time.Time
	if t.o.trace > 0 {
		tick := time.NewTicker(t.o.trace)
		defer tick.Stop()
		tickC = tick.C
	}
	for {
		select {
		case <-t.rec.all:
			return nil
		case <-capT.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-tickC:
			st, _ := t.s.k.Stats()
			t.logf("  t=%5.1fs recovered %5d  registered %5d  kamailio: REGISTERs %6d 503s %6d saved %5d  %s\n",
				time.Since(t.restoreAt).Seconds(), t.rec.recovered.Load(), t.cl.registered(), st.Registers, st.Shed,
				st.Saved, t.cl.trace())
		}
	}
}

// report fills the result in from the recorder and Kamailio's counters.
func (t *trial) report() (Result, error) {
	o, res := t.o, &t.res
	end := time.Now()
	st, err := t.s.k.Stats()
	if err != nil {
		return *res, err
	}
	var backs []time.Duration
	var detMax time.Duration
	for i := range t.rec.tracks {
		tr := &t.rec.tracks[i]
		if l := tr.lostAt.Load(); l != 0 {
			detMax = max(detMax, time.Unix(0, l).Sub(t.cutAt))
		}
		if b := tr.backAt.Load(); b != 0 {
			backs = append(backs, time.Unix(0, b).Sub(t.restoreAt))
		}
	}
	sort.Slice(backs, func(i, j int) bool { return backs[i] < backs[j] })
	res.Stuck = o.n - len(backs)
	res.CapS = o.capFor(t.strategy).Seconds()
	if g, ok := t.cl.(interface{ gaveUp() int }); ok {
		res.GaveUp = g.gaveUp()
	}
	if res.Stuck == 0 {
		res.RecoverS = backs[len(backs)-1].Seconds()
	} else {
		res.RecoverS = end.Sub(t.restoreAt).Seconds()
	}
	if len(backs) > 0 {
		res.FirstS = backs[0].Seconds()
		res.HalfS = backs[(len(backs)-1)/2].Seconds()
	}
	res.RatioToLimit = res.RecoverS / (float64(o.n) / o.capacity)
	res.RejectedFrac = float64(st.Shed) / float64(o.n)
	res.TransactionsPerTrunk = float64(t.cl.transactions()-t.tx0) / float64(o.n)
	res.ServerPerTrunk = float64(st.Registers) / float64(o.n)
	res.DetectMaxS = detMax.Seconds()
	res.Undetected = t.undetected
	if !isRelink(t.strategy) {
		// It detects nothing: it was told at cut + bound.
		res.Undetected, res.DetectMaxS = 0, 0
	}
	t.logf("%-16s recovered %d/%d in %.2f s (first %.2f s, half %.2f s) after the restore; %d 503s, %d REGISTERs at Kamailio",
		t.strategy, len(backs), o.n, res.RecoverS, res.FirstS, res.HalfS, st.Shed, st.Registers)
	if isRelink(t.strategy) {
		t.logf("; loss noticed within %.2f s of the cut (%d not before the restore); at the restore the gate was %s with %d REGISTERs in flight",
			res.DetectMaxS, t.undetected, res.GateAtRestore, res.InFlightAtRestore)
	}
	t.logf("\n")
	return *res, nil
}

func countLost(r *recorder) int64 {
	var n int64
	for i := range r.tracks {
		if r.tracks[i].lostAt.Load() != 0 {
			n++
		}
	}
	return n
}

// waitAll polls count until it reaches n or ctx ends.
func waitAll(ctx context.Context, n int, count func() int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for count() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d registered: %w", count(), n, context.Cause(ctx))
		case <-tick.C:
		}
	}
	return nil
}

func aor(i int, realm string) string { return fmt.Sprintf("sip:t%d@%s", i, realm) }

// relinkClients is N sip.Trunks on one sip.Fleet.
type relinkClients struct {
	ua     *sip.UA
	fleet  *sip.Fleet
	trunks []*sip.Trunk
	uri    string
	cancel context.CancelFunc
	done   chan struct{}
}

func newRelink(o *options, s *site, rec *recorder, gc backoff.GateConfig) (*relinkClients, error) {
	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		return nil, err
	}
	index := make(map[*sip.Trunk]int, o.n)
	var mu sync.RWMutex
	fleet := sip.NewFleet(ua, sip.FleetConfig{Gate: gc, OnStateChange: func(sc sip.TrunkStateChange) {
		mu.RLock()
		i, ok := index[sc.Trunk]
		mu.RUnlock()
		if !ok {
			return
		}
		if sc.From == sip.Registered {
			rec.lost(i, sc.At)
		}
		if sc.To == sip.Registered {
			rec.back(i, sc.At)
		}
	}})
	c := &relinkClients{ua: ua, fleet: fleet, uri: s.uri}
	for i := range o.n {
		t, err := fleet.Add(sip.TrunkConfig{
			Registrars: []string{s.uri}, AOR: aor(i, s.k.Realm()), Password: s.k.Password(),
			KeepAlive: o.keepAlive, KeepAliveTimeout: o.timeout, RequestTimeout: o.reqTimeout,
			UnregisterTimeout: -1, // Kamailio is stopped after the run
		})
		if err != nil {
			ua.Close()
			return nil, err
		}
		mu.Lock()
		index[t] = i
		mu.Unlock()
		c.trunks = append(c.trunks, t)
	}
	return c, nil
}

// start runs the Fleet until stop (ctx bounds only the registration it
// waits for) and returns when every trunk is registered.
func (c *relinkClients) start(ctx context.Context) error {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		_ = c.fleet.Run(rctx)
	}()
	return waitAll(ctx, len(c.trunks), c.registered)
}

func (c *relinkClients) lose() {}

func (c *relinkClients) transactions() uint64 {
	var n uint64
	for _, t := range c.trunks {
		n += t.Transactions()
	}
	return n
}

func (c *relinkClients) registered() int { return c.fleet.Stats().Registered }

func (c *relinkClients) trace() string {
	var b strings.Builder
	for _, gs := range c.fleet.GateStats() {
		fmt.Fprintf(&b, "gate %v rate %.0f est %.0f queued %d inflight %d ok %d over %d unreach %d",
			gs.State, gs.Rate, gs.Estimate, gs.Queued, gs.InFlight, gs.Succeeded, gs.Overloaded, gs.Unreachable)
	}
	return b.String()
}

func (c *relinkClients) gate() (string, int) {
	for _, gs := range c.fleet.GateStats() {
		return gs.State.String(), gs.InFlight
	}
	return "", 0
}

func (c *relinkClients) stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
	c.ua.Close()
}
