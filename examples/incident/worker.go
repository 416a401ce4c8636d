package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff/fleetgate"
)

// workerMsg is one line a worker writes on stdout.
type workerMsg struct {
	Stats *workerStats `json:"stats,omitempty"`
	Event string       `json:"event,omitempty"` // -v: a state change, one line
	End   *workerEnd   `json:"end,omitempty"`
}

// workerStats are a worker's figures now, sent every 250 ms.
type workerStats struct {
	Believed  int    `json:"believed"`
	Recovered int    `json:"recovered"`
	Tx        uint64 `json:"tx"`
	Rejected  uint64 `json:"rejected"` // 503s its gate saw
	Gate      string `json:"gate"`
}

// workerEnd is a worker's figures at the stop mark.
type workerEnd struct {
	Recs []recSnap `json:"recs"`
	Proc procEnd   `json:"proc"`
}

// workerOut writes a worker's messages, one JSON line each.
type workerOut struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *workerOut) send(m workerMsg) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(m) // the parent gone: nothing to tell
}

// Write sends p (a state change line of relinkPop's) as an event.
func (o *workerOut) Write(p []byte) (int, error) {
	o.send(workerMsg{Event: string(p)})
	return len(p), nil
}

// quietRedis discards go-redis's log.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

// workerMain is a -procs worker: its trunks in a sip.Fleet whose gate keeps
// its state on Redis, stats on stdout every 250 ms, the incident's moments
// ("freeze NS", "restore NS", "stop NS": its records are sent then) and
// "quit" (or the end of stdin: its trunks unregister, it exits) on stdin.
func workerMain(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("incident-worker", flag.ContinueOnError)
	var pc popConfig
	var id int
	var rdAddr, prefix, users string
	var start int64
	fs.IntVar(&id, "id", 0, "the worker's number")
	fs.StringVar(&pc.Registrar, "registrar", "", "the registrar's URI")
	fs.StringVar(&pc.Host, "host", domain, "the AoRs' host")
	fs.StringVar(&pc.Pass, "pass", "", "digest password")
	fs.DurationVar(&pc.KeepAlive, "keepalive", 0, "TrunkConfig.KeepAlive")
	fs.StringVar(&rdAddr, "redis", "", "the shared Redis")
	fs.StringVar(&prefix, "prefix", fleetgate.DefaultPrefix, "the keys' prefix")
	fs.Int64Var(&start, "start", 0, "the incident's start, Unix ns")
	fs.StringVar(&users, "users", "", "the trunks' users, comma-separated")
	verbose := fs.Bool("v", false, "send every state change")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pc.Users = strings.Split(users, ",")
	slog.SetDefault(slog.New(slog.DiscardHandler))
	redis.SetLogger(quietRedis{})
	rdb := redis.NewClient(&redis.Options{Addr: rdAddr, ContextTimeoutEnabled: true,
		DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	defer rdb.Close()
	fleet, err := fleetgate.New(rdb, fleetgate.Config{Prefix: prefix, ID: "incident-" + strconv.Itoa(id)})
	if err != nil {
		return err
	}
	out := &workerOut{enc: json.NewEncoder(stdout)}
	pc.Fleet = fleet
	if *verbose {
		pc.Events = out
	}
	pop, err := newRelinkPop(pc, &marks{start: time.Unix(0, start)})
	if err != nil {
		return err
	}
	defer pop.close()
	_ = pop.start(ctx)
	defer pop.shutdown()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { sendStats(pop, out, stop) })
	defer wg.Wait()
	defer close(stop)
	return commands(pop, out, stdin)
}

// sendStats sends pop's figures every 250 ms until stop.
func sendStats(pop *relinkPop, out *workerOut, stop <-chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		gs, rej := pop.gate()
		out.send(workerMsg{Stats: &workerStats{Believed: pop.believed(), Recovered: pop.recovered(),
			Tx: pop.tx(), Rejected: rej, Gate: gs}})
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

// commands follows the parent's commands until "quit" or the end of stdin.
func commands(pop *relinkPop, out *workerOut, stdin io.Reader) error {
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		word, arg, _ := strings.Cut(sc.Text(), " ")
		at, _ := strconv.ParseInt(arg, 10, 64)
		switch kind := markKind(word); kind {
		case markFreeze, markRestore:
			pop.mark(kind, at)
		case markStop:
			pop.mark(kind, at)
			recs, procs, _ := pop.end()
			out.send(workerMsg{End: &workerEnd{Recs: recs, Proc: procs[0]}})
		case "quit":
			return nil
		default:
			return fmt.Errorf("incident worker: unknown command %q", sc.Text())
		}
	}
	return sc.Err()
}
