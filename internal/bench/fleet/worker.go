package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
)

// workerReport is what a worker prints when its clients are done.
type workerReport struct {
	DoneUnixNano int64 `json:"done_unix_nano"` // the last client's success
	Attempts     int   `json:"attempts"`
	Rejected     int   `json:"rejected"`
	Calls        int   `json:"calls"`       // calls to Redis
	MaxWaitNs    int64 `json:"max_wait_ns"` // the slowest call
	Stuck        int   `json:"stuck"`
}

// quiet discards go-redis's log: shared-redis-down kills Redis on purpose.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// runWorker is one process: its gate, "ready", then on "go" its clients.
func runWorker(o *options) error {
	redis.SetLogger(quiet{})
	cfg := backoff.GateConfig{Destination: o.fleetKey}
	if o.worker == "local-rate" || o.worker == "shared-rate" {
		cfg.Rate = o.capacity
	}
	var counted *countingFleet
	if o.worker != "local" && o.worker != "local-rate" {
		rdb := redis.NewClient(&redis.Options{Addr: o.redis, ContextTimeoutEnabled: true,
			DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
		defer rdb.Close()
		f, err := fleetgate.New(rdb, fleetgate.Config{ID: fmt.Sprintf("p%d", o.id), Heartbeat: 200 * time.Millisecond})
		if err != nil {
			return err
		}
		counted = &countingFleet{Fleet: f}
		cfg.Fleet = counted
	}
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
	if line, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil || line != "go\n" {
		return fmt.Errorf("worker %d: no go (%q): %w", o.id, line, err)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
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
		}()
	}
	wg.Wait()
	return rep
}

// client retries one registration through g until the server admits it.
func client(ctx context.Context, o *options, g *backoff.Gate) (attempts, rejected int, ok bool) {
	c, err := net.Dial("udp", o.server)
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

// countingFleet counts its members' Redis calls and keeps the slowest.
type countingFleet struct {
	*fleetgate.Fleet
	calls, slowest atomic.Int64
}

func (f *countingFleet) Join(d string) backoff.FleetMember {
	return countingMember{f.Fleet.Join(d), f}
}

type countingMember struct {
	backoff.FleetMember
	f *countingFleet
}

func (m countingMember) took(start time.Time) {
	m.f.calls.Add(1)
	for d := int64(time.Since(start)); ; {
		old := m.f.slowest.Load()
		if d <= old || m.f.slowest.CompareAndSwap(old, d) {
			return
		}
	}
}

func (m countingMember) Admit(ctx context.Context, req backoff.FleetRequest) (backoff.FleetReply, error) {
	defer m.took(time.Now())
	rep, err := m.FleetMember.Admit(ctx, req)
	if os.Getenv("RELINK_FLEET_LOG") != "" && (req.Propose || rep.Pace.Version != req.Pace.Version) {
		fmt.Fprintf(os.Stderr, "%s req %+v rep %+v err %v\n", time.Now().Format("05.000"), req, rep, err)
	}
	return rep, err
}

func (m countingMember) Scout(ctx context.Context, lease time.Duration, reopened bool) (backoff.FleetScout, error) {
	defer m.took(time.Now())
	return m.FleetMember.Scout(ctx, lease, reopened)
}
