package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/testkit"
)

// ConnsResult is the conns row.
type ConnsResult struct {
	Row             string  `json:"row"` // "conns"
	Conns           int     `json:"conns"`
	Ports           int     `json:"ports"`            // echo server ports dialed, round robin
	ProbeIntervalS  float64 `json:"probe_interval_s"` // the wrapped connections' ProbeInterval
	WindowS         float64 `json:"window_s"`         // the CPU window of each run
	HeapPerConnB    float64 `json:"heap_per_conn_b"`  // relink's: wrapped − plain, HeapInuse + StackInuse
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
	ProbesPerS      float64 `json:"probes_per_s"`     // writes by the wrapped run (its probes) per second
	CPUUsPerProbe   float64 `json:"cpu_us_per_probe"` // ProbeCPUPctCore's CPU per probe
	Dead            int     `json:"dead"`             // connections that died in either run (0 expected)
	DialS           float64 `json:"dial_s"`           // time to dial the wrapped run's connections
}

// connsChild is what one conns child (one mode) measured.
type connsChild struct {
	Mode       string  `json:"mode"`
	Heap       uint64  `json:"heap"`
	HeapInuse  uint64  `json:"heap_inuse"`
	Goroutines int     `json:"goroutines"`
	CPUS       float64 `json:"cpu_s"`
	WallS      float64 `json:"wall_s"`
	Writes     int64   `json:"writes"`
	Dead       int64   `json:"dead"`
	DialS      float64 `json:"dial_s"`
}

// connsRow runs the echo server, then a plain and a wrapped client, each in
// a process of its own.
func connsRow(o *options) (*ConnsResult, error) {
	echo, err := startChild("-role", "echo", "-ports", strconv.Itoa(o.ports), "-conns", strconv.Itoa(o.conns))
	if err != nil {
		return nil, err
	}
	var rd ready
	if err := echo.result(&rd, 30*time.Second); err != nil {
		echo.stop()
		return nil, err
	}
	if len(rd.Addrs) == 0 {
		echo.stop()
		return nil, errNoAddrs
	}
	var runs [2]connsChild
	for i, mode := range []string{"plain", "wrapped"} {
		if err := connsChildRun(o, mode, rd.Addrs, &runs[i]); err != nil {
			echo.stop()
			return nil, err
		}
	}
	echo.stop()
	return connsResult(o, runs[0], runs[1]), nil
}

func connsChildRun(o *options, mode string, addrs []string, res *connsChild) error {
	c, err := startChild("-role", "conns", "-mode", mode, "-addrs", strings.Join(addrs, ","),
		"-conns", strconv.Itoa(o.conns), "-conn-window", o.connWindow.String(),
		"-probe-interval", o.probeInterval.String(), "-timeout", o.timeout.String(), "-pprof", o.pprof)
	if err != nil {
		return err
	}
	defer c.stop()
	return c.result(res, o.timeout+o.connWindow+time.Minute)
}

func connsResult(o *options, plain, wrapped connsChild) *ConnsResult {
	n := float64(o.conns)
	pi := o.probeInterval
	if pi == 0 {
		pi = conn.DefaultProbeInterval
	}
	pct := func(c connsChild) float64 { return 100 * c.CPUS / c.WallS }
	r := &ConnsResult{Row: "conns", Conns: o.conns, Ports: o.ports, ProbeIntervalS: pi.Seconds(),
		WindowS:           wrapped.WallS,
		HeapPerConnB:      (float64(wrapped.Heap) - float64(plain.Heap)) / n,
		HeapObjPerConnB:   (float64(wrapped.HeapInuse) - float64(plain.HeapInuse)) / n,
		HeapPerConnTotalB: float64(wrapped.Heap) / n,
		HeapPerConnPlainB: float64(plain.Heap) / n,
		GoroutinesPerConn: float64(wrapped.Goroutines-plain.Goroutines) / n,
		WrappedCPUPct:     pct(wrapped),
		PlainCPUPct:       pct(plain),
		ProbesPerS:        float64(wrapped.Writes) / wrapped.WallS,
		Dead:              int(plain.Dead + wrapped.Dead),
		DialS:             wrapped.DialS,
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
	for range o.ports {
		e, err := testkit.ListenEcho("")
		if err != nil {
			return err
		}
		echos = append(echos, e)
		rd.Addrs = append(rd.Addrs, e.Addr())
	}
	b, _ := json.Marshal(rd)
	fmt.Fprintln(out, string(b))
	waitStdin(in)
	return nil
}

// counted counts the writes on a connection (a wrapped one's are its
// probes: nothing else writes). Both runs dial through it, so that its few
// bytes cancel out of the difference. NetConn lets conn find the socket.
type counted struct {
	net.Conn
	writes *atomic.Int64
}

func (c counted) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

func (c counted) NetConn() net.Conn { return c.Conn }

// connsClient is one conns child's connections.
type connsClient struct {
	writes, dead atomic.Int64
	conns        []net.Conn
}

// runConns is the conns role: it dials o.conns connections (plain or
// wrapped), each with a reader, and prints one connsChild.
func runConns(o *options, out io.Writer) error {
	if _, err := raiseFDs(uint64(o.conns + 1024)); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
	}
	addrs := strings.Split(o.addrs, ",")
	base := snapshot()
	cc := &connsClient{conns: make([]net.Conn, o.conns)}
	start := time.Now()
	if err := cc.dialAll(o, addrs); err != nil {
		return err
	}
	res := connsChild{Mode: o.mode, DialS: time.Since(start).Seconds()}
	time.Sleep(2 * time.Second) // let the readers block and the first probes settle
	held := snapshot().minus(base)
	if err := writeProfiles(o.pprof, "conns-"+o.mode); err != nil {
		return err
	}
	res.Heap, res.HeapInuse, res.Goroutines = held.heap, held.heapInuse, held.goroutines
	w0 := cc.writes.Load()
	m, err := startCPU(o.pprof, "conns-"+o.mode)
	if err != nil {
		return err
	}
	time.Sleep(o.connWindow)
	cpu, wall := m.stop()
	res.CPUS, res.WallS, res.Writes, res.Dead = cpu.Seconds(), wall.Seconds(), cc.writes.Load()-w0, cc.dead.Load()
	b, _ := json.Marshal(res)
	fmt.Fprintln(out, string(b))
	return nil
}

// dialAll dials the connections, 32 at a time, round robin over addrs,
// and starts a reader on each.
func (cc *connsClient) dialAll(o *options, addrs []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	cfg := conn.Config{Probe: conn.CRLF, ProbeInterval: o.probeInterval}
	raw := cfg.NetDialer()
	cd := conn.Dialer{Config: cfg, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := raw.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return counted{Conn: nc, writes: &cc.writes}, nil
	}}
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
					c, err = cd.Dial(ctx, "tcp", addr)
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
			cc.dead.Add(1)
			return
		}
	}
}
