package main

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"
)

// sipHerd runs one strategy on a fresh registrar: warm-up → cut → hole →
// restore → recovery → figures.
func sipHerd(e *env, strategy string) (Result, error) {
	o := e.o
	s, err := e.newSite()
	if err != nil {
		return Result{}, err
	}
	defer e.atExit(s.close)()
	if keeps(strategy) {
		// The warm-up is a herd at C too: what the fleet learned stays
		// what C is, not the pace of a registrar without a limit.
		if err := s.limit(o.capacity); err != nil {
			return Result{}, err
		}
	}
	ws, err := warmUp(e, s, strategy)
	if err != nil {
		return Result{}, err
	}
	defer e.atExit(ws.kill)()
	if err := s.limit(o.capacity); err != nil {
		return Result{}, err
	}
	ws.tell("cut")
	if err := ws.expect("cut", 10*time.Second); err != nil {
		return Result{}, err
	}
	at, shed0, err := outage(e, s, strategy)
	if err != nil {
		return Result{}, err
	}
	ws.tell("restore " + strconv.FormatInt(at.UnixNano(), 10))
	outs := ws.reports(o.timeout + 10*time.Second)
	shed1, err := s.shed()
	if err != nil {
		return Result{}, err
	}
	arrivals := s.arrivals(at)
	if os.Getenv("RELINK_FLEET_DEBUG") != "" {
		fmt.Fprintln(os.Stderr, "REGISTERs per 100 ms from the restore:", histogram(arrivals, at, 100*time.Millisecond))
	}
	if o.trace {
		printTrace(strategy, at, arrivals, outs)
	}
	r := tally(o, strategy, at, outs, arrivals)
	r.Registrar = s.kind()
	r.HoleS = o.hole.Seconds()
	r.RejectedFrac = float64(shed1-shed0) / float64(o.procs*o.trunks)
	return r, nil
}

// warmUp starts the workers and waits until every trunk is registered.
func warmUp(e *env, s site, strategy string) (*workers, error) {
	o := e.o
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	key := e.fleetKey(strategy)
	// Registering N trunks at C takes N/C; process starts, a few seconds.
	within := 30*time.Second + 3*time.Duration(float64(o.procs*o.trunks)/o.capacity*float64(time.Second))
	return startWorkers(o.procs, func(i int) *exec.Cmd {
		return s.command(exe, workerArgs(o, strategy, i, s.addr(), key))
	}, within)
}

// outage black-holes the path for the hole, then restores it (killing Redis
// first for shared-redis-down), and returns when the restore started and the
// 503s sent until then.
func outage(e *env, s site, strategy string) (time.Time, int, error) {
	if err := s.hole(); err != nil {
		return time.Time{}, 0, err
	}
	time.Sleep(e.o.hole)
	shed0, err := s.shed()
	if err != nil {
		_ = s.restore()
		return time.Time{}, 0, err
	}
	if strategy == "shared-redis-down" {
		if e.redis == nil {
			_ = s.restore()
			return time.Time{}, 0, fmt.Errorf("needs the Redis this command starts (no -redis)")
		}
		e.redis.kill()
		defer func() {
			// Empty, for the strategies after.
			if err := e.redis.restart(); err != nil {
				fmt.Fprintln(os.Stderr, "fleet: redis restart:", err)
			}
		}()
	}
	// The clock starts as the restore starts: the registrar may answer
	// before the restore returns (nft's rules go one namespace at a time;
	// the embedded registrar answers again before it closes connections).
	at := time.Now()
	if err := s.restore(); err != nil {
		return time.Time{}, 0, err
	}
	return at, shed0, nil
}

// tally turns the workers' reports and the registrar's arrivals into a
// Result (all but the registrar's own fields).
func tally(o *options, strategy string, start time.Time, outs []workerReport, arrivals []time.Time) Result {
	n := o.procs * o.trunks
	r := Result{Strategy: strategy, Procs: o.procs, Trunks: o.trunks, Capacity: o.capacity, Load1: load1()}
	var end, first time.Time
	var perAdmission []float64
	for _, w := range outs {
		end = laterOf(end, time.Unix(0, w.DoneUnixNano))
		if f := time.Unix(0, w.FirstUnixNano); w.FirstUnixNano != 0 && (first.IsZero() || f.Before(first)) {
			first = f
		}
		r.Stuck += w.Stuck
		r.Undetected += w.Undetected
		r.MaxRedisWaitMs = max(r.MaxRedisWaitMs, float64(w.MaxWaitNs)/1e6)
		if w.Attempts > 0 && shared(strategy) {
			perAdmission = append(perAdmission, float64(w.Calls)/float64(w.Attempts))
		}
	}
	r.Stuck += (o.procs - len(outs)) * o.trunks // workers that never reported
	if end.After(start) {
		r.RecoverS = end.Sub(start).Seconds()
	}
	if first.After(start) {
		r.FirstS = first.Sub(start).Seconds()
	}
	r.RatioToLimit = r.RecoverS / (float64(n) / o.capacity)
	r.RedisOpsPerAdmission = median(perAdmission)
	r.PeakLoadRatio = float64(peak(arrivals, 100*time.Millisecond)) / (o.capacity / 10)
	r.ServerPerTrunk = float64(len(arrivals)) / float64(n)
	return r
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// histogram counts at (sorted) per interval from start.
func histogram(at []time.Time, start time.Time, every time.Duration) []int {
	var h []int
	for _, t := range at {
		i := int(t.Sub(start) / every)
		for len(h) <= i {
			h = append(h, 0)
		}
		h[i]++
	}
	return h
}

// printTrace writes -trace's lines for one herd to stderr: the REGISTERs per
// 100 ms window aligned on the clock (Kamailio's windows), from the window
// of the restore; the busiest sliding 100 ms and when it starts; and the
// fleet pace's versions (as first seen by any worker, dated when the store
// set them) and the pauses the workers told, timed from the restore.
func printTrace(strategy string, restore time.Time, arrivals []time.Time, outs []workerReport) {
	w := 100 * time.Millisecond
	first := restore.Truncate(w)
	fmt.Fprintf(os.Stderr, "trace %s: REGISTERs per clock-aligned 100 ms from %+.3f s: %v\n", strategy,
		first.Sub(restore).Seconds(), histogram(arrivals, first, w))
	n, from := peakAt(arrivals, w)
	if n > 0 {
		fmt.Fprintf(os.Stderr, "trace %s: peak %d in the 100 ms from %+.3f s\n", strategy, n, from.Sub(restore).Seconds())
	}
	versions := map[uint64]traceNote{}
	var notes []traceNote
	for _, out := range outs {
		for _, n := range out.Trace {
			if n.PushBackMs > 0 {
				notes = append(notes, n)
			} else if old, ok := versions[n.Version]; !ok || n.AtUnixNano < old.AtUnixNano {
				versions[n.Version] = n
			}
		}
	}
	for _, n := range versions {
		notes = append(notes, n)
	}
	slices.SortFunc(notes, func(a, b traceNote) int { return cmp.Compare(a.AtUnixNano, b.AtUnixNano) })
	for _, n := range notes {
		at := time.Unix(0, n.AtUnixNano).Sub(restore).Seconds()
		if n.PushBackMs > 0 {
			fmt.Fprintf(os.Stderr, "trace %s: %+.3f s a worker tells a pause of %d ms\n", strategy, at, n.PushBackMs)
			continue
		}
		fmt.Fprintf(os.Stderr, "trace %s: %+.3f s pace %.1f estimate %.1f startup %v ceiling %.1f (version %d)\n",
			strategy, at, n.Pace, n.Estimate, n.Startup, n.Ceiling, n.Version)
	}
}

// peakAt is peak, with the time of the window's first arrival.
func peakAt(at []time.Time, window time.Duration) (int, time.Time) {
	most, j := 0, 0
	var from time.Time
	for i := range at {
		for at[i].Sub(at[j]) >= window {
			j++
		}
		if i-j+1 > most {
			most, from = i-j+1, at[j]
		}
	}
	return most, from
}
