package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/redistest"
)

// env is what the strategies of one run share: where the registrar and the
// workers run, and Redis.
type env struct {
	o     *options
	kind  string      // "kamailio", "embedded" or "window"
	pair  *netns.Pair // kamailio: the server and client namespaces
	redis *redisCtl   // nil with -redis
	// lastKey is the fleet of the last shared herd, which
	// shared-second-herd and shared-redis-down recover towards again.
	lastKey string

	// undo holds what an interrupt must end: the registrar, the workers,
	// Redis and the namespaces.
	mu   sync.Mutex
	undo map[int]func()
	seq  int
}

// atExit registers fn to run at an interrupt, and returns the function that
// runs it now instead (once).
func (e *env) atExit(fn func()) func() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.seq++
	id := e.seq
	e.undo[id] = fn
	return func() {
		e.mu.Lock()
		f, ok := e.undo[id]
		delete(e.undo, id)
		e.mu.Unlock()
		if ok {
			f()
		}
	}
}

// interrupted ends everything atExit holds, newest first.
func (e *env) interrupted() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id := e.seq; id > 0; id-- {
		if f, ok := e.undo[id]; ok {
			f()
		}
	}
	e.undo = nil
}

// onInterrupt cleans up and exits at SIGINT or SIGTERM, until the returned
// stop is called.
func (e *env) onInterrupt() (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-sigs:
			fmt.Fprintln(os.Stderr, "fleet: interrupted; cleaning up")
			e.interrupted()
			os.Exit(130)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
	}
}

// run is the parent: setup → one herd per strategy → report.
func run(o *options, out func(Result)) error {
	e, err := setup(o)
	if err != nil {
		return err
	}
	defer e.atExit(e.close)()
	defer e.onInterrupt()()
	for range o.runs {
		for _, strategy := range o.strategies {
			var r Result
			if e.kind == "window" {
				r, err = windowHerd(e, strategy)
			} else {
				r, err = sipHerd(e, strategy)
			}
			if err != nil {
				return fmt.Errorf("%s: %w", strategy, err)
			}
			out(r)
		}
	}
	return nil
}

// setup picks the registrar, makes the namespaces it needs and starts Redis
// where the workers can reach it.
func setup(o *options) (*env, error) {
	e := &env{o: o, kind: "window", undo: make(map[int]func())}
	if o.server == "sip" {
		e.kind = o.registrar
		if e.kind == "auto" {
			e.kind = "embedded"
			if netns.Available() == nil && kamailio.Available() == nil {
				e.kind = "kamailio"
			}
		}
	}
	var ns *netns.Namespace
	if e.kind == "kamailio" && loopback(o.redis) {
		return nil, fmt.Errorf("-redis %s: the workers run in a network namespace of their own, whose loopback is not this host's (leave -redis out, or use -registrar embedded)", o.redis)
	}
	if e.kind == "kamailio" {
		p, err := netns.New()
		if err != nil {
			return nil, err
		}
		e.pair, ns = p, p.Client()
	}
	if o.redis == "" && needsRedis(o.strategies) {
		r, err := startRedis(ns)
		if err != nil {
			e.close()
			return nil, err
		}
		e.redis = r
		o.redis = r.s.Addr()
	}
	return e, nil
}

func needsRedis(strategies []string) bool {
	return slices.ContainsFunc(strategies, shared)
}

func (e *env) close() {
	if e.redis != nil {
		e.redis.close()
	}
	if e.pair != nil {
		_ = e.pair.Close()
	}
}

// newSite starts a fresh registrar.
func (e *env) newSite() (site, error) {
	if e.kind == "kamailio" {
		return newKamailio(e.pair, e.o.retryAfter)
	}
	return newEmbedded(e.o.retryAfter)
}

// fleetKey is the Redis key prefix of a strategy's fleet: a fresh one
// (nothing learned), or the last shared herd's.
func (e *env) fleetKey(strategy string) string {
	key := "relink:bench:" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	switch {
	case strategy == "shared":
		e.lastKey = key
	case keeps(strategy) && e.lastKey != "":
		key = e.lastKey
	}
	return key
}

// redisCtl is the redis-server this command started, in the workers'
// namespace (nil: the host's).
type redisCtl struct {
	s  *redistest.Server
	ns *netns.Namespace
}

func startRedis(ns *netns.Namespace) (*redisCtl, error) {
	dir, err := os.MkdirTemp("", "relink-fleet-")
	if err != nil {
		return nil, err
	}
	r := &redisCtl{ns: ns}
	// A process forked from a thread in ns runs in ns.
	err = r.in(func() error {
		var err error
		r.s, err = redistest.Launch(dir)
		return err
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return r, nil
}

// in runs fn in the namespace.
func (r *redisCtl) in(fn func() error) error {
	if r.ns == nil {
		return fn()
	}
	return r.ns.Do(fn)
}

func (r *redisCtl) kill() { r.s.Kill() }

// restart starts it again, empty.
func (r *redisCtl) restart() error { return r.in(r.s.Restart) }

func (r *redisCtl) close() {
	r.s.Kill()
	os.RemoveAll(r.s.Dir())
}

// peak is the most arrivals in any window (sliding), at sorted.
func peak(at []time.Time, window time.Duration) int {
	n, _ := peakAt(at, window)
	return n
}

func sortTimes(at []time.Time) {
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
}

// median of xs (0 when empty).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	m := len(xs) / 2
	if len(xs)%2 == 1 {
		return xs[m]
	}
	return (xs[m-1] + xs[m]) / 2
}

// load1 is the 1-minute load average, or 0 where /proc/loadavg is missing.
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _, _ := strings.Cut(string(b), " ")
	v, _ := strconv.ParseFloat(f, 64)
	return v
}

// loopback reports whether addr (host:port) is on a loopback address.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
