package main

import (
	"context"
	"os"
	"os/exec"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff/fleetgate"
	"github.com/relinkgo/relink/internal/redistest"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/sip"
)

// redisKilled: the fleet's gate keeps its admission on Redis (fleetgate);
// the registrar serves trunks/4 REGISTERs per second (503 Retry-After 1 s
// beyond); every flow is reset, and Redis is SIGKILLed 500 ms into the
// recovery (the gate falls back to local admission); Redis comes back
// after the recovery.
func redisKilled(ctx context.Context, o *options) (*world, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, &skipError{"needs redis-server: " + err.Error()}
	}
	dir, err := os.MkdirTemp("", "relink-faults-redis-")
	if err != nil {
		return nil, err
	}
	w := newWorld(o)
	w.cleanup = append(w.cleanup, func() { _ = os.RemoveAll(dir) })
	redis.SetLogger(quietRedis{})
	rs, err := redistest.Launch(dir)
	if err != nil {
		return w, err
	}
	w.cleanup = append(w.cleanup, rs.Kill)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), ContextTimeoutEnabled: true, DialTimeout: 50 * time.Millisecond})
	w.cleanup = append(w.cleanup, func() { _ = rdb.Close() })
	fg, err := fleetgate.New(rdb, fleetgate.Config{})
	if err != nil {
		return w, err
	}
	if _, err := w.addRegistrar(registrar.Config{}); err != nil {
		return w, err
	}
	if err := w.startFleet(ctx, true, nil, func(fc *sip.FleetConfig) { fc.Gate.Fleet = fg }); err != nil {
		return w, err
	}
	w.env = "embedded+redis"
	w.capacity = max(float64(o.trunks)/4, 1)
	w.regs[0].r.SetCapacity(w.capacity)
	w.bound, w.detect = o.keepAlive, true
	w.note = "fleetgate on redis-server, killed 500 ms after the reset, restarted after the recovery; "
	w.markCut()
	w.regs[0].proxy.Reset()
	w.markRestore()
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return w, err
	}
	rs.Kill()
	err = w.waitRecovered(ctx)
	if rerr := rs.Restart(); rerr != nil {
		w.note += "redis restart: " + rerr.Error() + "; "
	}
	w.stop()
	return w, err
}

// quietRedis drops go-redis's own log lines (a killed Redis is the row's
// point, not news).
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}
