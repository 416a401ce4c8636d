// Command detect measures how fast relink's conn.Conn notices that its peer
// went silent, on many flows at once: F flows to an echo server are
// black-holed at the same moment, and the program reports the detection
// time of each (p50, p99, max) against the configured bound,
// ProbeInterval + ProbeTimeout.
//
//	go run ./internal/bench/detect -flows 1000
//	go run ./internal/bench/detect -flows 1000 -json
//	go run ./internal/bench/detect -flows 1000 -method proxy -interval 1s -timeout 1s
//
// Methods: "netns" (root, Linux, ip and nft installed) puts the echo server
// and the clients in two network namespaces and drops the server port's
// packets with one nft rule: a real black hole. "proxy" puts the freeze
// proxy of internal/faultproxy in front of the server and freezes it (only
// application probes can detect that, since the proxy's kernel keeps
// acknowledging). "auto" (the default) picks netns when available.
//
// A flow's detection time runs from the last inbound byte its reader saw
// (the last probe answer before the cut) to the moment Done() is observed
// closed; the application probe promises that this is ProbeInterval +
// ProbeTimeout. The text output also gives the times from the black-hole
// instant, which are at most the bound.
//
// With -json the program prints exactly one JSON object: flows, bound_s,
// p50_s, p99_s, max_s, detected, method. The goal is all flows detected
// and p99 ≤ bound + 100 ms. The exit status is 1 when a flow was not
// detected, 2 on a setup error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
)

// Result is the -json output.
type Result struct {
	Flows    int     `json:"flows"`
	BoundS   float64 `json:"bound_s"`
	P50S     float64 `json:"p50_s"`
	P99S     float64 `json:"p99_s"`
	MaxS     float64 `json:"max_s"`
	Detected int     `json:"detected"`
	Method   string  `json:"method"`
}

// options are the command's flags.
type options struct {
	flows    int
	interval time.Duration
	timeout  time.Duration
	method   string // auto, netns, proxy
	settle   time.Duration
}

// report is what run measured, beyond Result.
type report struct {
	Result
	why       string          // why this method
	fromCut   []time.Duration // detection times from the cut, sorted
	fromLast  []time.Duration // detection times from the last inbound byte, sorted
	otherEnds map[string]int  // flows that ended for another reason, by error
	setup     time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.flows, "flows", 1000, "flows black-holed at the same moment")
	flag.DurationVar(&o.interval, "interval", time.Second, "conn.Config.ProbeInterval")
	flag.DurationVar(&o.timeout, "timeout", time.Second, "conn.Config.ProbeTimeout")
	flag.StringVar(&o.method, "method", "auto", "auto, netns (network namespaces + nft DROP; root) or proxy (freeze proxy)")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "how long the flows exchange probes before the cut")
	asJSON := flag.Bool("json", false, "print one JSON object")
	flag.Parse()
	if o.flows <= 0 || o.interval <= 0 || o.timeout <= 0 || o.settle < 0 {
		fmt.Fprintln(os.Stderr, "detect: -flows, -interval and -timeout must be positive, -settle non-negative")
		os.Exit(2)
	}
	switch o.method {
	case "auto", "netns", "proxy":
	default:
		fmt.Fprintf(os.Stderr, "detect: unknown -method %q (want auto, netns or proxy)\n", o.method)
		os.Exit(2)
	}

	// On ^C, stop measuring and clean up (the namespaces are deleted).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := run(ctx, o, func(format string, args ...any) {
		if !*asJSON {
			fmt.Printf(format, args...)
		}
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "detect:", err)
		os.Exit(2)
	}
	if *asJSON {
		if err := json.NewEncoder(os.Stdout).Encode(r.Result); err != nil {
			fmt.Fprintln(os.Stderr, "detect:", err)
			os.Exit(2)
		}
	} else {
		printReport(r)
	}
	if r.Detected < r.Flows {
		os.Exit(1)
	}
}

func printReport(r *report) {
	bound := time.Duration(r.BoundS * float64(time.Second))
	fmt.Printf("detected %d/%d flows (setup %v)\n", r.Detected, r.Flows, r.setup.Round(time.Millisecond))
	for why, n := range r.otherEnds {
		fmt.Printf("  %d flows ended otherwise: %s\n", n, why)
	}
	if len(r.fromLast) == 0 {
		return
	}
	fmt.Printf("%-32s %9s %9s %9s\n", "detection time", "p50", "p99", "max")
	fmt.Printf("%-32s %9s %9s %9s\n", "from the last inbound byte",
		ms(pct(r.fromLast, 50)), ms(pct(r.fromLast, 99)), ms(r.fromLast[len(r.fromLast)-1]))
	fmt.Printf("%-32s %9s %9s %9s\n", "from the black-hole instant",
		ms(pct(r.fromCut, 50)), ms(pct(r.fromCut, 99)), ms(r.fromCut[len(r.fromCut)-1]))
	goal := bound + 100*time.Millisecond
	verdict := "met"
	if r.Detected < r.Flows || pct(r.fromLast, 99) > goal {
		verdict = "NOT met"
	}
	fmt.Printf("bound %v (ProbeInterval + ProbeTimeout); goal: all detected, p99 ≤ %v: %s\n", bound, goal, verdict)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

// pct returns the p-th percentile of sorted (nearest rank).
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// env is a place to run the flows: where the server listens, how clients
// dial, how the path is cut.
type env struct {
	method string
	why    string
	addr   string
	dial   func(ctx context.Context, network, addr string) (net.Conn, error) // nil: default
	cut    func() error
	close  func()
}

// run measures once: setup (the environment, every flow up) → warm-up
// (the flows exchange probes) → fault (the cut, then waiting for every flow
// to end) → report.
func run(ctx context.Context, o options, logf func(string, ...any)) (*report, error) {
	need := uint64(4*o.flows + 256)
	lim, err := testkit.RaiseFileLimit(need)
	if err != nil {
		return nil, err
	}
	if lim < need {
		return nil, fmt.Errorf("RLIMIT_NOFILE hard limit %d < %d descriptors needed; raise it (ulimit -Hn) or use fewer -flows", lim, need)
	}
	start := time.Now()
	e, err := newEnv(pickMethod(o.method))
	if err != nil {
		return nil, err
	}
	defer e.close()
	bound := o.interval + o.timeout
	logSetup(logf, e, o, bound)
	// The CRLF ping as a plain ProberFunc: conn.CRLF is also a ReplyFilter
	// and would strip its pongs before the reader, whose last inbound byte
	// is where each flow's detection time starts.
	d := conn.Dialer{
		Config: conn.Config{Probe: conn.ProberFunc(conn.CRLF.Probe), ProbeInterval: o.interval, ProbeTimeout: o.timeout},
		Dial:   e.dial,
	}
	flows, err := dialAll(ctx, &d, e.addr, o.flows, o.interval)
	defer closeAll(flows)
	if err != nil {
		return nil, err
	}
	setup := time.Since(start)
	logf("%d flows up in %v; exchanging probes for %v, then cutting\n", len(flows), setup.Round(time.Millisecond), o.settle)
	if err := warmUp(ctx, flows, o.settle); err != nil {
		return nil, err
	}
	cutAt, err := cutAndWait(ctx, e, flows, 2*bound+5*time.Second)
	if err != nil {
		return nil, err
	}
	r := measure(flows, cutAt)
	r.why, r.setup = e.why, setup
	r.Method, r.BoundS = e.method, bound.Seconds()
	return r, nil
}

// pickMethod resolves "auto" and says why the method was chosen.
func pickMethod(method string) (string, string) {
	if method != "auto" {
		return method, "chosen with -method"
	}
	if err := netns.Available(); err != nil {
		return "proxy", fmt.Sprintf("network namespaces unavailable (%v)", err)
	}
	return "netns", "running as root with ip and nft"
}

func logSetup(logf func(string, ...any), e *env, o options, bound time.Duration) {
	switch e.method {
	case "netns":
		logf("method: netns — echo server and clients in two network namespaces, one nft DROP rule on the server port both ways (%s)\n", e.why)
	case "proxy":
		logf("method: proxy — in-process freeze proxy (no FIN, no RST; its kernel keeps ACKing, so only application probes can see it) (%s)\n", e.why)
	}
	logf("flows %d, ProbeInterval %v, ProbeTimeout %v: bound %v\n", o.flows, o.interval, o.timeout, bound)
}

// closeAll closes every flow and waits for its reader.
func closeAll(flows []*flow) {
	for _, f := range flows {
		f.c.Close()
	}
	for _, f := range flows {
		<-f.done
	}
}

// warmUp lets the flows exchange probes for settle; none may end.
func warmUp(ctx context.Context, flows []*flow, settle time.Duration) error {
	if !ctxtime.Sleep(ctx, settle) {
		return context.Cause(ctx)
	}
	for _, f := range flows {
		select {
		case <-f.done:
			return fmt.Errorf("a flow ended before the cut: %w", f.c.Err())
		default:
		}
	}
	return nil
}

// cutAndWait cuts the path and waits for every flow to end, or for limit.
// It returns when the cut was in place: when cut returned (installing the
// nft rules takes a few ms, during which answers may still arrive).
func cutAndWait(ctx context.Context, e *env, flows []*flow, limit time.Duration) (time.Time, error) {
	if err := e.cut(); err != nil {
		return time.Time{}, err
	}
	cutAt := time.Now()
	wait := time.NewTimer(limit)
	defer wait.Stop()
	for _, f := range flows {
		select {
		case <-f.done:
		case <-wait.C:
		case <-ctx.Done():
			return cutAt, context.Cause(ctx)
		}
	}
	return cutAt, nil
}

// measure collects the detection times of the flows that ended, unresponsive.
func measure(flows []*flow, cutAt time.Time) *report {
	r := &report{otherEnds: map[string]int{}}
	r.Flows = len(flows)
	for _, f := range flows {
		select {
		case <-f.done:
		default:
			continue // not detected in time
		}
		if err := f.c.Err(); !errors.Is(err, conn.ErrUnresponsive) {
			r.otherEnds[fmt.Sprint(err)]++
			continue
		}
		r.Detected++
		r.fromCut = append(r.fromCut, f.doneAt.Sub(cutAt))
		r.fromLast = append(r.fromLast, f.doneAt.Sub(f.lastByte))
	}
	slices.Sort(r.fromCut)
	slices.Sort(r.fromLast)
	if n := len(r.fromLast); n > 0 {
		r.P50S = pct(r.fromLast, 50).Seconds()
		r.P99S = pct(r.fromLast, 99).Seconds()
		r.MaxS = r.fromLast[n-1].Seconds()
	}
	return r
}

func newEnv(method, why string) (*env, error) {
	switch method {
	case "netns":
		p, err := netns.New()
		if err != nil {
			return nil, err
		}
		ln, err := p.ListenTCP(0)
		if err != nil {
			p.Close()
			return nil, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		srv := testkit.ServeEcho(ln)
		return &env{
			method: method,
			why:    why,
			addr:   p.ServerAddr(port),
			dial:   p.DialContext,
			cut: func() error {
				_, err := p.BlackHole(port) // removed with the namespaces
				return err
			},
			close: func() {
				srv.Close()
				p.Close()
			},
		}, nil
	case "proxy":
		srv, err := testkit.ListenEcho("")
		if err != nil {
			return nil, err
		}
		px, err := faultproxy.New(srv.Addr())
		if err != nil {
			srv.Close()
			return nil, err
		}
		return &env{
			method: method,
			why:    why,
			addr:   px.Addr(),
			cut:    func() error { px.Freeze(); return nil },
			close: func() {
				px.Close()
				srv.Close()
			},
		}, nil
	}
	return nil, fmt.Errorf("unknown method %q", method)
}

// flow is one monitored connection and its reader.
type flow struct {
	c        *conn.Conn
	done     chan struct{} // closed when the reader saw the end
	lastByte time.Time     // when the last Read with bytes returned; valid after done
	doneAt   time.Time     // when Done() was observed closed; valid after done
}

// dialAll dials n flows, spread evenly over spread so that their probes
// are out of phase (the cut then finds each flow at a different point of its
// probe cycle), a few at a time, and starts a reader on each.
func dialAll(ctx context.Context, d *conn.Dialer, addr string, n int, spread time.Duration) ([]*flow, error) {
	flows := make([]*flow, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range flows {
		if !ctxtime.Sleep(ctx, time.Until(start.Add(spread*time.Duration(i)/time.Duration(n)))) {
			errs <- context.Cause(ctx)
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			c, err := d.DialContext(dctx, "tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			f := &flow{c: c, done: make(chan struct{}), lastByte: time.Now()}
			go f.read()
			flows[i] = f
		}()
	}
	wg.Wait()
	close(errs)
	up := slices.DeleteFunc(flows, func(f *flow) bool { return f == nil })
	if err := <-errs; err != nil {
		return up, fmt.Errorf("dial: %w (%d of %d flows up)", err, len(up), n)
	}
	return up, nil
}

// read is the flow's application read loop: it drains the probe answers
// (any inbound byte proves liveness) until the connection ends.
func (f *flow) read() {
	defer close(f.done)
	buf := make([]byte, 512)
	for {
		n, err := f.c.Read(buf)
		if n > 0 {
			f.lastByte = time.Now()
		}
		if err != nil {
			break
		}
	}
	<-f.c.Done()
	f.doneAt = time.Now()
}
