package fleetgate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
)

// Defaults of Config.
const (
	DefaultPrefix    = "relink:gate:"
	DefaultTimeout   = 50 * time.Millisecond
	DefaultHeartbeat = time.Second
	DefaultPaceTTL   = 10 * time.Minute
	// memberLives is a member's lifetime in heartbeats: one that stops
	// heartbeating leaves the count after this many intervals.
	memberLives = 3
)

// ErrContextTimeout is returned by New for a client whose
// ContextTimeoutEnabled is false: go-redis would then wait for its
// ReadTimeout (3 s by default) rather than the bound the gate sets on each
// call.
var ErrContextTimeout = errors.New("fleetgate: the redis client needs ContextTimeoutEnabled")

// Config configures a Fleet. The zero value is the documented default of
// every field; a negative duration turns the field's feature off, as each
// field says.
type Config struct {
	// Prefix starts every key. Zero means DefaultPrefix ("relink:gate:").
	// A destination's keys are Prefix + "{" + destination + "}:" + a suffix
	// (tat, pace, pause, lease, opened, members): one hash slot per
	// destination on a Redis Cluster.
	Prefix string
	// Timeout bounds each call to Redis. Zero means DefaultTimeout (50 ms);
	// negative turns it off, leaving the gate's own backoff.FleetCallBound
	// (100 ms). A call that times out puts the gate on local admission.
	Timeout time.Duration
	// Heartbeat is how often a member renews its membership; a member that
	// stops (a crash) leaves the count after three intervals, and Leave
	// removes it at once; the others believe a lower count one heartbeat
	// after they first see it (a Redis restarted empty counts the members
	// again one by one). Zero means DefaultHeartbeat (1 s). Negative turns
	// membership off: Members reports 1, so a process cut off from Redis
	// admits at the whole last known fleet pace.
	Heartbeat time.Duration
	// PaceTTL is how long the fleet's learned pace, and its count of
	// reopenings, outlive the last admission: the next herd and a restarted
	// process start from it. Zero means DefaultPaceTTL (10 min). Negative
	// turns the expiry off (kept until Redis loses it).
	PaceTTL time.Duration
	// ID names this process in the member set and as the scout lease's
	// holder (each Join adds "/n", so that two gates of one process count
	// as two members). Zero means hostname-pid-random; give each process
	// its own.
	ID string
}

// Fleet is a backoff.Fleet on Redis (7.x, or a compatible server such as
// Valkey). It is safe for concurrent use; one Fleet serves every Gate of a
// process, whatever their destinations.
type Fleet struct {
	c     redis.UniversalClient
	cfg   Config
	joins atomic.Uint64 // numbers the members, so two gates of one process are two
}

// New returns a Fleet on c. c must have ContextTimeoutEnabled (New checks
// it for *redis.Client, *redis.ClusterClient and *redis.Ring), so that each
// call ends at its bound.
func New(c redis.UniversalClient, cfg Config) (*Fleet, error) {
	if !contextTimeouts(c) {
		return nil, ErrContextTimeout
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	cfg.Timeout = orOff(cfg.Timeout, DefaultTimeout)
	cfg.Heartbeat = orOff(cfg.Heartbeat, DefaultHeartbeat)
	cfg.PaceTTL = orOff(cfg.PaceTTL, DefaultPaceTTL)
	if cfg.ID == "" {
		cfg.ID = defaultID()
	}
	return &Fleet{c: c, cfg: cfg}, nil
}

func contextTimeouts(c redis.UniversalClient) bool {
	switch c := c.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled
	}
	return true
}

// orOff returns def for zero, and -1 (off) for a negative d.
func orOff(d, def time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return -1
	}
	return d
}

func defaultID() string {
	host, _ := os.Hostname()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
}

// Join starts the membership of this process for destination: a goroutine
// heartbeats until Leave. It never blocks on Redis.
func (f *Fleet) Join(destination string) backoff.FleetMember {
	k := func(s string) string { return f.cfg.Prefix + "{" + destination + "}:" + s }
	m := &member{
		f:       f,
		id:      f.cfg.ID + "/" + strconv.FormatUint(f.joins.Add(1), 10),
		admit:   []string{k("tat"), k("pace"), k("pause"), k("opened"), k("members")},
		scout:   []string{k("lease"), k("opened")},
		members: []string{k("members")},
		stop:    make(chan struct{}),
	}
	m.count.Store(1)
	if f.cfg.Heartbeat > 0 {
		m.wg.Add(1)
		go m.heartbeats()
	}
	return m
}

// member is one Gate's membership.
type member struct {
	f                     *Fleet
	id                    string   // Config.ID and the join's number
	admit, scout, members []string // keys
	count                 atomic.Int64
	stop                  chan struct{}
	leave                 sync.Once
	wg                    sync.WaitGroup
}

// bound applies Config.Timeout to ctx.
func (m *member) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if m.f.cfg.Timeout > 0 {
		return context.WithTimeout(ctx, m.f.cfg.Timeout)
	}
	return context.WithCancel(ctx)
}

// Admit runs admitScript: one round trip (two after Redis lost its script
// cache: EVALSHA, then EVAL).
func (m *member) Admit(ctx context.Context, req backoff.FleetRequest) (backoff.FleetReply, error) {
	ctx, cancel := m.bound(ctx)
	defer cancel()
	v, err := admitScript.Run(ctx, m.f.c, m.admit,
		fmtFloat(req.Pace.Pace), fmtFloat(req.Pace.Estimate), flag(req.Pace.Startup),
		strconv.FormatUint(req.Pace.Version, 10), flag(req.Propose), flag(req.Book),
		strconv.FormatUint(req.Held, 10), strconv.FormatInt(req.PushBack.Microseconds(), 10),
		strconv.FormatInt(m.f.cfg.PaceTTL.Milliseconds(), 10),
		strconv.FormatInt(req.Grow.Microseconds(), 10), fmtFloat(req.Ceiling),
		fmtFloat(req.Pace.Ceiling), strconv.FormatInt(req.Pace.CeilingAge.Microseconds(), 10),
		strconv.FormatInt(req.Pace.RetryAfter.Microseconds(), 10), flag(req.Reopened),
		fmtFloat(req.Gentle), fmtFloat(backoff.FleetGentleGrowth)).StringSlice()
	if err != nil {
		return backoff.FleetReply{}, fmt.Errorf("fleetgate: admit: %w", err)
	}
	rep, live, err := parseAdmit(v)
	if err == nil {
		m.counted(live)
	}
	return rep, err
}

// counted takes a count of the live members from an answer to Admit: a
// higher one at once (the processes of a fleet that starts together join
// one by one, and a share reckoned on a count too low is a burst), a lower
// one only from the heartbeats (see heartbeats).
func (m *member) counted(live int64) {
	for {
		old := m.count.Load()
		if live <= old || m.count.CompareAndSwap(old, live) {
			return
		}
	}
}

// parseAdmit reads admitScript's answer, and the live members it counted.
func parseAdmit(v []string) (backoff.FleetReply, int64, error) {
	if len(v) != 14 {
		return backoff.FleetReply{}, 0, fmt.Errorf("fleetgate: admit: %d values, want 14", len(v))
	}
	us := func(s string) time.Duration {
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.Duration(n) * time.Microsecond
	}
	var rep backoff.FleetReply
	rep.Pace.Pace, _ = strconv.ParseFloat(v[0], 64)
	rep.Pace.Estimate, _ = strconv.ParseFloat(v[1], 64)
	rep.Pace.Startup = v[2] == "1"
	rep.Pace.Version, _ = strconv.ParseUint(v[3], 10, 64)
	rep.Paused = us(v[4])
	rep.Seq, _ = strconv.ParseUint(v[5], 10, 64)
	rep.Wait = us(v[6])
	rep.Due, rep.Lost = us(v[7]), v[7] == "lost"
	rep.Opened, _ = strconv.ParseUint(v[8], 10, 64)
	rep.PaceAge = max(us(v[9]), 0)
	rep.Pace.Ceiling, _ = strconv.ParseFloat(v[10], 64)
	rep.Pace.CeilingAge = max(us(v[11]), 0)
	rep.Pace.RetryAfter = max(us(v[12]), 0)
	live, _ := strconv.ParseInt(v[13], 10, 64)
	return rep, live, nil
}

// Scout runs scoutScript.
func (m *member) Scout(ctx context.Context, lease time.Duration, reopened bool) (backoff.FleetScout, error) {
	ctx, cancel := m.bound(ctx)
	defer cancel()
	ms := int64(0)
	if lease > 0 {
		ms = max(lease.Milliseconds(), 1)
	}
	v, err := scoutScript.Run(ctx, m.f.c, m.scout, m.id, ms, flag(reopened),
		m.f.cfg.PaceTTL.Milliseconds()).Int64Slice()
	if err != nil {
		return backoff.FleetScout{}, fmt.Errorf("fleetgate: scout: %w", err)
	}
	if len(v) != 2 {
		return backoff.FleetScout{}, fmt.Errorf("fleetgate: scout: %d values, want 2", len(v))
	}
	return backoff.FleetScout{Granted: v[0] == 1, Opened: uint64(max(v[1], 0))}, nil
}

// Members returns the live members counted by the last heartbeat that
// reached Redis; 1 before the first, or without heartbeats.
func (m *member) Members() int { return int(max(m.count.Load(), 1)) }

// heartbeats renews the membership every Config.Heartbeat until Leave.
func (m *member) heartbeats() {
	defer m.wg.Done()
	t := time.NewTicker(m.f.cfg.Heartbeat)
	defer t.Stop()
	life := strconv.FormatInt((memberLives * m.f.cfg.Heartbeat).Milliseconds(), 10)
	var last int64
	for {
		ctx, cancel := m.bound(context.Background())
		if n, err := heartbeatScript.Run(ctx, m.f.c, m.members, m.id, life).Int64(); err == nil {
			// A count that fell is believed one heartbeat later: a Redis
			// that restarted empty counts the members one by one as they
			// heartbeat, and a share taken from a count too low is a
			// burst.
			m.count.Store(max(n, last))
			last = n
		}
		cancel()
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
	}
}

// Leave stops the heartbeats and removes the member from the count at once
// (if Redis answers within Config.Timeout; otherwise it lapses within three
// heartbeats). It is idempotent and returns the removal's error.
func (m *member) Leave() error {
	var err error
	m.leave.Do(func() {
		close(m.stop)
		m.wg.Wait()
		if m.f.cfg.Heartbeat <= 0 {
			return
		}
		ctx, cancel := m.bound(context.Background())
		defer cancel()
		if e := m.f.c.ZRem(ctx, m.members[0], m.id).Err(); e != nil {
			err = fmt.Errorf("fleetgate: leave: %w", e)
		}
	})
	return err
}

// fmtFloat formats a number for the scripts without an exponent: Redis's
// Lua reads "1e+06", but other engines that speak Redis's protocol do not
// (gopher-lua, in miniredis, reads it as nil and the script fails).
func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
