package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/testkit"
)

// ConnsResult is the conns row.
type ConnsResult struct {
	Row             string  `json:"row"` // "conns"
	Conns           int     `json:"conns"`
	Procs           int     `json:"procs"`              // client processes (and echo servers) per run
	Ports           int     `json:"ports"`              // ports per echo server, dialed round robin
	ProbeIntervalS  float64 `json:"probe_interval_s"`   // the wrapped connections' ProbeInterval
	KeepAliveS      float64 `json:"kernel_keepalive_s"` // both runs' kernel keepalive idle (-1: off)
	WindowS         float64 `json:"window_s"`           // the CPU window of each run
	HeapPerConnB    float64 `json:"heap_per_conn_b"`    // relink's: wrapped − plain, HeapInuse + StackInuse
	HeapObjPerConnB float64 `json:"heap_inuse_per_conn_b"`
	// HeapPerConnTotalB is the wrapped run's whole heap and stacks per
	// connection, its socket and reader goroutine included;
	// HeapPerConnPlainB the plain run's.
	HeapPerConnTotalB float64 `json:"heap_per_conn_total_b"`
	HeapPerConnPlainB float64 `json:"heap_per_conn_plain_b"`
	GoroutinesPerConn float64 `json:"goroutines_per_conn"` // relink's: wrapped − plain
	// ProbeCPUPctCore is the wrapped run's CPU less the plain run's, in %
	// of one core.
	ProbeCPUPctCore float64 `json:"probe_cpu_pct_core"`
	WrappedCPUPct   float64 `json:"wrapped_cpu_pct_core"`
	PlainCPUPct     float64 `json:"plain_cpu_pct_core"`
	ProbesPerS      float64 `json:"probes_per_s"`     // the wrapped run's probes per second
	CPUUsPerProbe   float64 `json:"cpu_us_per_probe"` // ProbeCPUPctCore's CPU per probe
	// The floor: a third run of plain connections in which one goroutine
	// per client writes conn.CRLF's 4 bytes on each connection once per
	// probe interval, a share every 10 ms (the wheel's tick), the echo
	// server answering as it answers probes. WritesCPUPctCore is its CPU
	// less the plain run's: what the write and the reply's read cost
	// without relink. 0 with -floor=false.
	WritesCPUPctCore float64 `json:"writes_cpu_pct_core,omitempty"`
	WritesPerS       float64 `json:"writes_per_s,omitempty"`
	CPUUsPerWrite    float64 `json:"cpu_us_per_write,omitempty"`
	// Dead are the connections that died (their reader got an error)
	// in the plain and the wrapped run, by cause: 0 expected. Deaths
	// beside LoopbackDrops are the kernel's: a loaded host's loopback
	// drops segments when its per-CPU backlog (net.core.netdev_max_backlog)
	// is full, and TCP_USER_TIMEOUT aborts what stays unacknowledged.
	DeadPlain   map[string]int64 `json:"dead_plain"`
	DeadWrapped map[string]int64 `json:"dead_wrapped"`
	Dead        int              `json:"dead"`
	DeadWrites  int              `json:"dead_writes,omitempty"` // in the floor's run
	// DeadAtHeap are the connections already dead when the heaps were
	// taken (plain + wrapped): the heap figures hold only when it is 0.
	DeadAtHeap    int     `json:"dead_at_heap"`
	LoopbackDrops uint64  `json:"loopback_drops"`     // /proc/net/softnet_stat, whole host, during the runs
	Backlog       int     `json:"netdev_max_backlog"` // in force during the runs
	DialS         float64 `json:"dial_s"`             // time to dial the wrapped run's connections
}

// connsChild is what one conns child (one mode) measured.
type connsChild struct {
	Mode       string           `json:"mode"`
	Heap       uint64           `json:"heap"`
	HeapInuse  uint64           `json:"heap_inuse"`
	Goroutines int              `json:"goroutines"`
	CPUS       float64          `json:"cpu_s"`
	WallS      float64          `json:"wall_s"`
	Writes     int64            `json:"writes"`
	Dead       map[string]int64 `json:"dead"`
	DeadHeld   int              `json:"dead_held"` // dead when the heap was taken
	DialS      float64          `json:"dial_s"`
}

// connsRow runs the echo servers, then the plain and the wrapped clients,
// each in processes of their own: procs pairs of an echo server and a
// client, each client with its share of the connections (a process may
// hold no more descriptors than the file limit, which only a process with
// CAP_SYS_RESOURCE may raise above the hard limit). The clients of one mode
// run at once; their heaps, goroutines and CPU add up.
func connsRow(o *options) (*ConnsResult, error) {
	procs := o.procs
	if procs == 0 {
		limit, _ := raiseFDs(uint64(o.conns + 1024))
		procs = (o.conns + int(limit) - 1024 - 1) / max(1, int(limit)-1024)
	}
	procs = max(1, min(procs, o.conns))
	var echos []*child
	defer func() {
		for _, e := range echos {
			e.stop()
		}
	}()
	var addrs [][]string
	for range procs {
		e, err := startChild("-role", "echo", "-ports", strconv.Itoa(o.ports),
			"-conns", strconv.Itoa(o.conns/procs+1))
		if err != nil {
			return nil, err
		}
		echos = append(echos, e)
		var rd ready
		if err := e.result(&rd, 30*time.Second); err != nil {
			return nil, err
		}
		if len(rd.Addrs) == 0 {
			return nil, errNoAddrs
		}
		addrs = append(addrs, rd.Addrs)
	}
	backlog, restore, err := raiseBacklog(o.backlog)
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
	}
	defer restore()
	modes := []string{"plain", "wrapped"}
	if o.floor {
		modes = append(modes, "writes")
	}
	runs := make([]connsSum, len(modes))
	drops0 := loopbackDrops()
	for i, mode := range modes {
		if err := connsRun(o, mode, addrs, &runs[i]); err != nil {
			return nil, err
		}
	}
	r := connsResult(o, runs[0], runs[1])
	if o.floor {
		floorResult(r, runs[0], runs[2])
	}
	r.Procs, r.LoopbackDrops, r.Backlog = procs, loopbackDrops()-drops0, backlog
	return r, nil
}

// connsSum adds up the clients of one mode.
type connsSum struct {
	heap, heapInuse   float64
	goroutines        int
	cpuPct, probesPer float64 // % of one core; writes per second
	wallS, dialS      float64 // the shortest window; the slowest dial
	dead              map[string]int64
	deadHeld          int
}

// connsRun runs one client per echo server (addrs[i]), at once, each with
// its share of o.conns, and adds up their figures into sum.
func connsRun(o *options, mode string, addrs [][]string, sum *connsSum) error {
	cs := make([]*child, 0, len(addrs))
	defer func() {
		for _, c := range cs {
			c.stop()
		}
	}()
	for i, a := range addrs {
		n := o.conns/len(addrs) + btoi(i < o.conns%len(addrs))
		c, err := startChild("-role", "conns", "-mode", mode, "-addrs", strings.Join(a, ","),
			"-conns", strconv.Itoa(n), "-conn-window", o.connWindow.String(),
			"-probe-interval", o.probeInterval.String(), "-timeout", o.timeout.String(),
			"-conn-keepalive", o.connKeep.String(), "-pprof", o.pprof, "-id", strconv.Itoa(i))
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	sum.wallS, sum.dead = math.Inf(1), map[string]int64{}
	for _, c := range cs {
		var res connsChild
		if err := c.result(&res, o.timeout+o.connWindow+time.Minute); err != nil {
			return err
		}
		sum.heap += float64(res.Heap)
		sum.heapInuse += float64(res.HeapInuse)
		sum.goroutines += res.Goroutines
		sum.cpuPct += 100 * res.CPUS / res.WallS
		sum.probesPer += float64(res.Writes) / res.WallS
		sum.wallS, sum.dialS = min(sum.wallS, res.WallS), max(sum.dialS, res.DialS)
		sum.deadHeld += res.DeadHeld
		for k, v := range res.Dead {
			sum.dead[k] += v
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// floorResult fills the floor's figures of r from the plain and writes runs.
func floorResult(r *ConnsResult, plain, writes connsSum) {
	r.WritesCPUPctCore = writes.cpuPct - plain.cpuPct
	r.WritesPerS = writes.probesPer
	if r.WritesPerS > 0 {
		r.CPUUsPerWrite = r.WritesCPUPctCore / 100 / r.WritesPerS * 1e6
	}
	for _, v := range writes.dead {
		r.DeadWrites += int(v)
	}
}

func connsResult(o *options, plain, wrapped connsSum) *ConnsResult {
	n := float64(o.conns)
	pi := o.probeInterval
	if pi == 0 {
		pi = conn.DefaultProbeInterval
	}
	ka := conn.DefaultKeepAliveIdle
	if o.connKeep != 0 {
		ka = max(-time.Second, o.connKeep)
	}
	r := &ConnsResult{Row: "conns", Conns: o.conns, Ports: o.ports, ProbeIntervalS: pi.Seconds(), KeepAliveS: ka.Seconds(),
		WindowS:           wrapped.wallS,
		HeapPerConnB:      (wrapped.heap - plain.heap) / n,
		HeapObjPerConnB:   (wrapped.heapInuse - plain.heapInuse) / n,
		HeapPerConnTotalB: wrapped.heap / n,
		HeapPerConnPlainB: plain.heap / n,
		GoroutinesPerConn: float64(wrapped.goroutines-plain.goroutines) / n,
		WrappedCPUPct:     wrapped.cpuPct,
		PlainCPUPct:       plain.cpuPct,
		ProbesPerS:        wrapped.probesPer,
		DeadPlain:         plain.dead,
		DeadWrapped:       wrapped.dead,
		DialS:             wrapped.dialS,
	}
	r.DeadAtHeap = plain.deadHeld + wrapped.deadHeld
	for _, v := range plain.dead {
		r.Dead += int(v)
	}
	for _, v := range wrapped.dead {
		r.Dead += int(v)
	}
	r.ProbeCPUPctCore = r.WrappedCPUPct - r.PlainCPUPct
	if r.ProbesPerS > 0 {
		r.CPUUsPerProbe = r.ProbeCPUPctCore / 100 / r.ProbesPerS * 1e6
	}
	return r
}

// serveEcho is the echo role: an echo server on o.ports loopback ports
// until stdin closes.
func serveEcho(o *options, in io.Reader, out io.Writer) error {
	if _, err := raiseFDs(uint64(o.conns + 1024)); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
	}
	var rd ready
	var echos []*testkit.Echo
	defer func() {
		for _, e := range echos {
			_ = e.Close()
		}
	}()
	// No keepalive of the server's own: it would only add loopback
	// traffic beside what the clients' kernel options and probes send.
	lc := net.ListenConfig{KeepAlive: -1}
	for range o.ports {
		ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		e := testkit.ServeEcho(ln)
		echos = append(echos, e)
		rd.Addrs = append(rd.Addrs, e.Addr())
	}
	b, _ := json.Marshal(rd)
	fmt.Fprintln(out, string(b))
	waitStdin(in)
	return nil
}

// countingCRLF is conn.CRLF (its pongs stripped) that counts the probes
// written.
type countingCRLF struct{ n *atomic.Int64 }

func (p countingCRLF) Probe(w io.Writer) error {
	p.n.Add(1)
	return conn.CRLF.Probe(w)
}

func (countingCRLF) NewStripper() conn.Stripper {
	return conn.CRLF.(conn.ReplyFilter).NewStripper()
}

// connsClient is one conns child's connections.
type connsClient struct {
	writes atomic.Int64
	mu     sync.Mutex
	dead   map[string]int64 // by cause; guarded by mu
	conns  []net.Conn
}

// runConns is the conns role: it dials o.conns connections (plain or
// wrapped), each with a reader, and prints one connsChild.
func runConns(o *options, out io.Writer) error {
	profileAllocs(o.pprof)
	if _, err := raiseFDs(uint64(o.conns + 1024)); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
	}
	addrs := strings.Split(o.addrs, ",")
	base := snapshot()
	cc := &connsClient{conns: make([]net.Conn, o.conns), dead: map[string]int64{}}
	start := time.Now()
	if err := cc.dialAll(o, addrs); err != nil {
		return err
	}
	res := connsChild{Mode: o.mode, DialS: time.Since(start).Seconds()}
	if o.mode == "writes" {
		stop := make(chan struct{})
		defer close(stop)
		go cc.writeFloor(o, stop)
	}
	time.Sleep(2 * time.Second) // let the readers block and the first probes settle
	held := snapshot().minus(base)
	if err := writeProfiles(o.pprof, "conns-"+o.mode+o.id); err != nil {
		return err
	}
	res.Heap, res.HeapInuse, res.Goroutines = held.heap, held.heapInuse, held.goroutines
	for _, v := range cc.deaths() {
		res.DeadHeld += int(v)
	}
	w0 := cc.writes.Load()
	m, err := startCPU(o.pprof, "conns-"+o.mode+o.id)
	if err != nil {
		return err
	}
	time.Sleep(o.connWindow)
	cpu, wall := m.stop()
	res.CPUS, res.WallS, res.Writes, res.Dead = cpu.Seconds(), wall.Seconds(), cc.writes.Load()-w0, cc.deaths()
	b, _ := json.Marshal(res)
	fmt.Fprintln(out, string(b))
	return nil
}

// writeFloor is the writes mode's writer: conn.CRLF's ping on each
// connection once per probe interval, a share of them every 10 ms, until
// stop closes.
func (cc *connsClient) writeFloor(o *options, stop <-chan struct{}) {
	const tick = 10 * time.Millisecond
	interval := cmp.Or(o.probeInterval, conn.DefaultProbeInterval)
	perTick := max(1, int(int64(len(cc.conns))*int64(tick)/int64(interval)))
	ping := []byte("\r\n\r\n")
	t := time.NewTicker(tick)
	defer t.Stop()
	for i := 0; ; {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		for range perTick {
			if _, err := cc.conns[i].Write(ping); err == nil {
				cc.writes.Add(1)
			}
			i = (i + 1) % len(cc.conns)
		}
	}
}

// dialAll dials the connections, 32 at a time, round robin over addrs,
// and starts a reader on each.
func (cc *connsClient) dialAll(o *options, addrs []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cfg := conn.Config{Probe: countingCRLF{&cc.writes}, ProbeInterval: o.probeInterval}
	if o.connKeep != 0 {
		cfg.KeepAlive = net.KeepAliveConfig{Enable: o.connKeep > 0, Idle: o.connKeep}
	}
	raw := cfg.NetDialer()
	cd := conn.Dialer{Config: cfg}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(cc.conns); i = int(next.Add(1) - 1) {
				addr := addrs[i%len(addrs)]
				var c net.Conn
				var err error
				if o.mode == "wrapped" {
					var wc *conn.Conn
					if wc, err = cd.DialContext(ctx, "tcp", addr); err == nil {
						c = wc
					}
				} else {
					c, err = raw.DialContext(ctx, "tcp", addr)
				}
				if err != nil {
					errs <- fmt.Errorf("dial %d to %s: %w", i, addr, err)
					cancel()
					return
				}
				cc.conns[i] = c
				go cc.read(c)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// read is the application's reader: it reads until the connection fails,
// and counts the failure.
func (cc *connsClient) read(c net.Conn) {
	var buf [64]byte
	for {
		if _, err := c.Read(buf[:]); err != nil {
			cc.mu.Lock()
			cc.dead[cause(err)]++
			cc.mu.Unlock()
			return
		}
	}
}

func (cc *connsClient) deaths() map[string]int64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return maps.Clone(cc.dead)
}

// cause names why a connection died.
func cause(err error) string {
	switch {
	case errors.Is(err, syscall.ETIMEDOUT):
		return "kernel_timeout" // TCP_USER_TIMEOUT or keepalive
	case errors.Is(err, conn.ErrUnresponsive):
		return "unresponsive" // relink's probe went unanswered
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF):
		return "eof"
	}
	return "other"
}
