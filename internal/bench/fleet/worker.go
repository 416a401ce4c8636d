package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
	"github.com/relinkgo/relink/sip"
)

// quiet discards go-redis's log: shared-redis-down kills Redis on purpose.
type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// runWorker is one worker process.
func runWorker(o *options) error {
	redis.SetLogger(quiet{})
	// sipgo logs failed requests and closing connections to slog.Default.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	if o.server == "window" {
		return runWindowWorker(o)
	}
	return runSIPWorker(o)
}

// gateConfig is the gate of a strategy: adaptive or told C, local or joined
// to the fleet on Redis (then counted).
func gateConfig(o *options) (backoff.GateConfig, *countingFleet, func(), error) {
	var cfg backoff.GateConfig
	if told(o.worker) {
		cfg.Rate = o.capacity
	}
	if !shared(o.worker) {
		return cfg, nil, func() {}, nil
	}
	rdb := redis.NewClient(&redis.Options{Addr: o.redis, ContextTimeoutEnabled: true,
		DialTimeout: 50 * time.Millisecond, MaxRetries: -1})
	f, err := fleetgate.New(rdb, fleetgate.Config{Prefix: o.fleetKey, ID: "p" + strconv.Itoa(o.id),
		Heartbeat: 200 * time.Millisecond})
	if err != nil {
		rdb.Close()
		return cfg, nil, nil, err
	}
	counted := &countingFleet{Fleet: f, trace: o.trace}
	cfg.Fleet = counted
	return cfg, counted, func() { rdb.Close() }, nil
}

// runSIPWorker is one gateway process: a sip.Fleet of o.trunks trunks
// towards the registrar, "ready" once they are registered; on "cut" it notes
// from then on which trunks lose their registration; on "restore T" it waits
// until each of them is registered again and prints its report. It never
// unregisters: the parent kills it.
func runSIPWorker(o *options) error {
	cfg, counted, done, err := gateConfig(o)
	if err != nil {
		return err
	}
	defer done()
	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		return err
	}
	tr := &tracker{idx: make(map[*sip.Trunk]int)}
	fleet := sip.NewFleet(ua, sip.FleetConfig{Gate: cfg, OnStateChange: tr.change})
	if err := addTrunks(o, fleet, tr); err != nil {
		return err
	}
	go func() { _ = fleet.Run(context.Background()) }()
	in := bufio.NewReader(os.Stdin)
	if err := waitRegistered(fleet, o.trunks, 10*time.Minute); err != nil {
		return err
	}
	fmt.Println("ready")
	if err := expectLine(in, "cut"); err != nil {
		return err
	}
	admitted0 := admitted(fleet)
	if counted != nil {
		counted.reset()
	}
	tr.cut(time.Now())
	fmt.Println("cut")
	restore, err := expectRestore(in)
	if err != nil {
		return err
	}
	rep := tr.wait(restore, o.timeout)
	rep.Attempts = admitted(fleet) - admitted0
	if counted != nil {
		rep.Calls, rep.MaxWaitNs = int(counted.calls.Load()), counted.slowest.Load()
		rep.Trace = counted.traced(restore.Add(-time.Second))
	}
	if os.Getenv("RELINK_FLEET_DEBUG") != "" {
		fmt.Fprintf(os.Stderr, "worker %d: %+v %+v\n", o.id, fleet.Stats(), fleet.GateStats())
	}
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
	_, _ = io.Copy(io.Discard, in) // until the parent ends us
	os.Exit(0)
	return nil
}

// addTrunks adds the process's trunks, user "pIDtJ", password "secret".
func addTrunks(o *options, fleet *sip.Fleet, tr *tracker) error {
	host, _, err := net.SplitHostPort(o.target)
	if err != nil {
		return err
	}
	uri := "sip:" + o.target + ";transport=tcp"
	tr.left = make([]time.Time, o.trunks)
	tr.back = make([]time.Time, o.trunks)
	for j := range o.trunks {
		user := fmt.Sprintf("p%dt%d", o.id, j)
		t, err := fleet.Add(sip.TrunkConfig{
			Registrars:       []string{uri},
			AOR:              "sip:" + user + "@" + host,
			Username:         user,
			Password:         "secret",
			Expires:          time.Hour, // no refresh during the run
			KeepAlive:        o.keepAlive,
			KeepAliveTimeout: o.kaTimeout,
		})
		if err != nil {
			return err
		}
		tr.idx[t] = j
	}
	return nil
}

func waitRegistered(fleet *sip.Fleet, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for fleet.Stats().Registered < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d trunks registered after %v", fleet.Stats().Registered, n, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func admitted(fleet *sip.Fleet) int {
	n := 0
	for _, st := range fleet.GateStats() {
		n += int(st.Admitted)
	}
	return n
}

func expectLine(in *bufio.Reader, want string) error {
	line, err := in.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		return fmt.Errorf("want %q, got %q: %w", want, line, err)
	}
	return nil
}

// expectRestore reads "restore UNIXNANO".
func expectRestore(in *bufio.Reader) (time.Time, error) {
	line, err := in.ReadString('\n')
	if err != nil {
		return time.Time{}, err
	}
	ns, ok := strings.CutPrefix(strings.TrimSpace(line), "restore ")
	n, perr := strconv.ParseInt(ns, 10, 64)
	if !ok || perr != nil {
		return time.Time{}, fmt.Errorf("want \"restore UNIXNANO\", got %q", line)
	}
	return time.Unix(0, n), nil
}

// tracker follows the trunks from the cut: when each last left Registered,
// and when it was registered again after that.
type tracker struct {
	idx map[*sip.Trunk]int // written before the fleet runs

	mu         sync.Mutex
	cutAt      time.Time
	left, back []time.Time
}

func (tr *tracker) change(sc sip.TrunkStateChange) {
	i, ok := tr.idx[sc.Trunk]
	if !ok {
		return
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.cutAt.IsZero() {
		return
	}
	switch {
	case sc.From == sip.Registered:
		// The last loss counts: a trunk that lost its registration and
		// got it back before the black hole lost it again in the hole.
		tr.left[i], tr.back[i] = sc.At, time.Time{}
	case sc.To == sip.Registered && !tr.left[i].IsZero() && tr.back[i].IsZero():
		tr.back[i] = sc.At
	}
}

func (tr *tracker) cut(at time.Time) {
	tr.mu.Lock()
	tr.cutAt = at
	tr.mu.Unlock()
}

// wait returns when every trunk that lost its registration is back, or
// timeout after restore.
func (tr *tracker) wait(restore time.Time, timeout time.Duration) workerReport {
	deadline := restore.Add(timeout)
	for {
		rep, waiting := tr.tally()
		if waiting == 0 || time.Now().After(deadline) {
			rep.Stuck = waiting
			return rep
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tr *tracker) tally() (rep workerReport, waiting int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for i := range tr.left {
		switch {
		case tr.left[i].IsZero():
			rep.Undetected++
		case tr.back[i].IsZero():
			waiting++
		default:
			at := tr.back[i].UnixNano()
			rep.DoneUnixNano = max(rep.DoneUnixNano, at)
			if rep.FirstUnixNano == 0 || at < rep.FirstUnixNano {
				rep.FirstUnixNano = at
			}
		}
	}
	return rep, waiting
}

// countingFleet counts its members' Redis calls and keeps the slowest; with
// trace, it notes each fleet pace version its members see and each pause
// they tell.
type countingFleet struct {
	*fleetgate.Fleet
	calls, slowest atomic.Int64
	trace          bool

	mu      sync.Mutex
	version uint64
	notes   []traceNote
}

func (f *countingFleet) reset() {
	f.calls.Store(0)
	f.slowest.Store(0)
}

// traceNote is one event of -trace: a fleet pace version first seen (at
// when the store set it), or a pause this process told the fleet.
type traceNote struct {
	AtUnixNano int64   `json:"at"`
	Version    uint64  `json:"v,omitempty"`
	Pace       float64 `json:"pace,omitempty"`
	Estimate   float64 `json:"est,omitempty"`
	Startup    bool    `json:"startup,omitempty"`
	Ceiling    float64 `json:"hi,omitempty"`
	PushBackMs int64   `json:"pb_ms,omitempty"`
}

// seen notes what req told and rep answered, at now.
func (f *countingFleet) seen(now time.Time, req backoff.FleetRequest, rep backoff.FleetReply) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.PushBack > 0 {
		f.notes = append(f.notes, traceNote{AtUnixNano: now.UnixNano(), PushBackMs: req.PushBack.Milliseconds()})
	}
	if p := rep.Pace; p.Version != f.version {
		f.version = p.Version
		f.notes = append(f.notes, traceNote{AtUnixNano: now.Add(-rep.PaceAge).UnixNano(), Version: p.Version,
			Pace: p.Pace, Estimate: p.Estimate, Startup: p.Startup, Ceiling: p.Ceiling})
	}
}

// traced returns the notes from from on.
func (f *countingFleet) traced(from time.Time) []traceNote {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []traceNote
	for _, n := range f.notes {
		if n.AtUnixNano >= from.UnixNano() {
			out = append(out, n)
		}
	}
	return out
}

// Join returns a counting member.
func (f *countingFleet) Join(d string) backoff.FleetMember {
	return countingMember{f.Fleet.Join(d), f}
}

type countingMember struct {
	backoff.FleetMember
	f *countingFleet
}

// took counts a call that started at start; one over backoff.FleetCallBound
// is printed to stderr (what, when, and its error).
func (m countingMember) took(start time.Time, what string, err error) {
	m.f.calls.Add(1)
	if d := time.Since(start); d > backoff.FleetCallBound {
		fmt.Fprintf(os.Stderr, "fleet: %s %s took %v (bound %v): %v\n", start.Format("15:04:05.000"), what, d,
			backoff.FleetCallBound, err)
	}
	for d := int64(time.Since(start)); ; {
		old := m.f.slowest.Load()
		if d <= old || m.f.slowest.CompareAndSwap(old, d) {
			return
		}
	}
}

func (m countingMember) Admit(ctx context.Context, req backoff.FleetRequest) (backoff.FleetReply, error) {
	start := time.Now()
	rep, err := m.FleetMember.Admit(ctx, req)
	m.took(start, "Admit", err)
	if m.f.trace && err == nil {
		m.f.seen(time.Now(), req, rep)
	}
	if os.Getenv("RELINK_FLEET_LOG") != "" && (req.Propose || rep.Pace.Version != req.Pace.Version) {
		fmt.Fprintf(os.Stderr, "%s req %+v rep %+v err %v\n", time.Now().Format("05.000"), req, rep, err)
	}
	return rep, err
}

func (m countingMember) Scout(ctx context.Context, lease time.Duration, reopened bool) (backoff.FleetScout, error) {
	start := time.Now()
	rep, err := m.FleetMember.Scout(ctx, lease, reopened)
	m.took(start, "Scout", err)
	return rep, err
}
