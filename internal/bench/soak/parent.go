package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"github.com/relinkgo/relink/internal/ctxtime"
)

// Sample is one "sample" line: what the client process held.
type Sample struct {
	Kind       string  `json:"kind"` // "sample"
	T          float64 `json:"t_s"`  // since the start, in s
	Min        float64 `json:"min"`
	Tag        string  `json:"tag,omitempty"` // "base" or "end"
	Heap       uint64  `json:"heap"`          // HeapInuse + StackInuse after a GC, bytes
	HeapInuse  uint64  `json:"heap_inuse"`
	StackInuse uint64  `json:"stack_inuse"`
	HeapAlloc  uint64  `json:"heap_alloc"` // bytes of live objects (not judged)
	Goroutines int     `json:"goroutines"`
	FDs        int     `json:"fds"`
	Registered int     `json:"registered"`
	Ready      int     `json:"ready"`
	Faults     int     `json:"faults"` // so far
	Load       string  `json:"load"`   // /proc/loadavg's first three fields
}

// Fault is one "fault" line.
type Fault struct {
	Kind    string  `json:"kind"` // "fault"
	N       int     `json:"n"`
	Name    string  `json:"name"`
	Start   float64 `json:"start_s"`   // since the run's start
	Cleared float64 `json:"cleared_s"` // since the run's start
	// Recovered says whether every unit recovered within -recover-cap;
	// RecoverS is from the clear to the last affected unit's return (0
	// when all were back before the clear).
	Recovered bool    `json:"recovered"`
	RecoverS  float64 `json:"recover_s"`
	Units     int     `json:"units"`
	Stuck     int     `json:"stuck"`
}

// Summary is the last line.
type Summary struct {
	Kind        string   `json:"kind"` // "summary"
	Env         string   `json:"env"`
	Seed        uint64   `json:"seed"`
	DurationS   float64  `json:"duration_s"`
	FaultEveryS float64  `json:"fault_every_s"`
	Trunks      int      `json:"trunks"`
	Links       int      `json:"links"`
	Faults      int      `json:"faults"`
	ByFault     []string `json:"by_fault"` // name×count
	Base        *Sample  `json:"base"`
	End         *Sample  `json:"end"`
	HeapPct     float64  `json:"heap_change_pct"`
	// LivePct is the change of the live heap (HeapAlloc + StackInuse),
	// not judged: HeapInuse also counts the free slots of spans that hold
	// a live object, which moves a few percent either way as allocations
	// come and go with no object more alive.
	LivePct     float64  `json:"live_change_pct"`
	GorPct      float64  `json:"goroutines_change_pct"`
	FDsPct      float64  `json:"fds_change_pct"`
	MaxRecoverS float64  `json:"max_recover_s"`
	Stuck       int      `json:"stuck"`
	Orphans     int      `json:"orphan_bindings"`
	Stale       int      `json:"stale_registered"`
	FalseDeaths int      `json:"false_deaths"`
	FlowDeaths  int      `json:"flow_deaths"`
	Pass        bool     `json:"pass"`
	Problems    []string `json:"problems,omitempty"`
	Note        string   `json:"note,omitempty"`
}

// soak is one run, seen from the parent.
type soak struct {
	o      *options
	env    env
	cl     *clientProc
	out    func(any)
	start  time.Time
	faults []fault
	rng    *rand.Rand
	n      int
	// quietAt is when the last fault's recovery ended: samples wait
	// -settle after it.
	quietAt time.Time
	sum     Summary
	byName  map[string]int
}

// run sets the servers up, starts the client and soaks it, calling out
// with each sample, fault and the summary.
func run(ctx context.Context, o *options, out func(any)) (Summary, error) {
	e, err := makeEnv(ctx, o)
	if err != nil {
		return Summary{}, err
	}
	defer func() { _ = e.close() }()
	exe, err := os.Executable()
	if err != nil {
		return Summary{}, err
	}
	s := &soak{o: o, env: e, out: out, rng: rand.New(rand.NewPCG(o.seed, o.seed^0x5eed)), byName: map[string]int{}}
	s.faults, _ = pickFaults(o.faults)
	s.sum = Summary{Kind: "summary", Env: e.name(), Seed: o.seed, DurationS: o.duration.Seconds(),
		FaultEveryS: o.faultEvery.Seconds(), Trunks: o.trunks, Links: o.links}
	s.cl, _, err = startClient(e.clientCmd(exe, o.clientArgs(e.sipURI(), e.echoAddr())), o.startCap+10*time.Second)
	if err != nil {
		return s.sum, err
	}
	defer s.cl.close()
	if err := s.loop(ctx); err != nil {
		return s.sum, err
	}
	if err := s.finish(); err != nil {
		return s.sum, err
	}
	out(&s.sum)
	return s.sum, nil
}

// makeEnv starts the servers where -env says.
func makeEnv(ctx context.Context, o *options) (env, error) {
	switch o.env {
	case "embedded":
		return newEmbedded(o)
	case "netns":
		return newNetns(ctx, o)
	}
	if netnsAvailable() == nil {
		return newNetns(ctx, o)
	}
	return newEmbedded(o)
}

// loop runs faults and samples until -duration, then takes the end sample.
func (s *soak) loop(ctx context.Context) error {
	s.start = time.Now()
	nextSample, nextFault := time.Duration(0), s.o.faultEvery
	for {
		now := time.Since(s.start)
		switch {
		case now >= s.o.duration:
			return s.takeSample(ctx, "end")
		case now >= nextSample && nextSample < s.o.duration:
			tag := ""
			if s.sum.Base == nil && now >= s.o.baseline() {
				tag = "base"
			}
			if err := s.takeSample(ctx, tag); err != nil {
				return err
			}
			for nextSample <= time.Since(s.start) {
				nextSample += s.o.sample // marks missed during a fault: one sample for them all
			}
			continue
		case now >= nextFault && now+s.o.faultEvery <= s.o.duration:
			if err := s.runFault(ctx); err != nil {
				return err
			}
			// A fault that overran its slot delays the next one, which
			// then starts at once: the run keeps its count of faults.
			nextFault += s.o.faultEvery
			continue
		}
		next := min(nextSample, s.o.duration)
		if max(nextFault, now)+s.o.faultEvery <= s.o.duration {
			next = min(next, nextFault)
		}
		if !ctxtime.Sleep(ctx, next-now) {
			return context.Cause(ctx)
		}
	}
}

// takeSample asks the client for a sample (and profiles when tagged).
func (s *soak) takeSample(ctx context.Context, tag string) error {
	settle := s.o.settle
	if tag == "" {
		settle /= 3 // a point of the curve only
	}
	if !ctxtime.Sleep(ctx, time.Until(s.quietAt.Add(settle))) {
		return context.Cause(ctx)
	}
	r, err := s.cl.ask(command{Op: "sample", Profile: tag}, time.Minute)
	if err != nil {
		return err
	}
	t := time.Since(s.start)
	m := r.Mem
	if m == nil {
		return errors.New("soak: sample without memory figures")
	}
	smp := &Sample{Kind: "sample", T: round(t.Seconds()), Min: round(t.Minutes()), Tag: tag, Heap: m.Heap,
		HeapInuse: m.HeapInuse, StackInuse: m.StackInuse, HeapAlloc: m.HeapAlloc, Goroutines: m.Goroutines, FDs: m.FDs,
		Registered: r.Registered, Ready: r.Ready, Faults: s.n, Load: loadAvg()}
	switch tag {
	case "base":
		s.sum.Base = smp
	case "end":
		s.sum.End = smp
		s.sum.FalseDeaths, s.sum.FlowDeaths = r.FalseDeaths, r.FlowDeaths
	}
	s.out(smp)
	return nil
}

// runFault draws a fault, makes it, clears it after its hold and waits for
// the recovery.
func (s *soak) runFault(ctx context.Context) error {
	f := s.faults[s.rng.IntN(len(s.faults))]
	s.n++
	s.byName[f.name]++
	rec := &Fault{Kind: "fault", N: s.n, Name: f.name, Start: round(time.Since(s.start).Seconds())}
	if _, err := s.cl.ask(command{Op: "cut", SIP: f.sip, Links: f.links}, 10*time.Second); err != nil {
		return err
	}
	if err := s.env.apply(ctx, f); err != nil {
		return fmt.Errorf("fault %s: %w", f.name, err)
	}
	if !ctxtime.Sleep(ctx, f.hold(s.o)) {
		return context.Cause(ctx)
	}
	if err := s.env.clear(ctx, f); err != nil {
		return fmt.Errorf("clear %s: %w", f.name, err)
	}
	cleared := time.Now()
	rec.Cleared = round(cleared.Sub(s.start).Seconds())
	if _, err := s.cl.ask(command{Op: "clear"}, 10*time.Second); err != nil {
		return err
	}
	for {
		r, err := s.cl.ask(command{Op: "status"}, 10*time.Second)
		if err != nil {
			return err
		}
		rec.Units = r.Total
		if r.Recovered == r.Total {
			rec.Recovered = true
			if r.LastBack > 0 {
				rec.RecoverS = round(max(0, time.Unix(0, r.LastBack).Sub(cleared).Seconds()))
			}
			break
		}
		if time.Since(cleared) > s.o.recoverCap {
			rec.Stuck = r.Total - r.Recovered
			break
		}
		if !ctxtime.Sleep(ctx, 100*time.Millisecond) {
			return context.Cause(ctx)
		}
	}
	s.quietAt = time.Now()
	s.sum.Stuck += rec.Stuck
	s.sum.MaxRecoverS = max(s.sum.MaxRecoverS, rec.RecoverS)
	s.out(rec)
	return nil
}

// finish counts stale registrations, stops the client, counts orphan
// bindings and judges the run.
func (s *soak) finish() error {
	r, err := s.cl.ask(command{Op: "registered"}, 10*time.Second)
	if err != nil {
		return err
	}
	registered := make([]string, 0, len(r.Trunks))
	for _, i := range r.Trunks {
		registered = append(registered, aorOf(i))
	}
	if s.sum.Stale, err = s.env.stale(registered); err != nil {
		return fmt.Errorf("bindings: %w", err)
	}
	st, err := s.cl.ask(command{Op: "stop"}, 2*time.Minute)
	if err != nil {
		return err
	}
	s.sum.Stuck += st.Stuck
	s.sum.Note = st.Note
	// The registrar may still be answering the last unregistrations.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := s.env.contacts()
		if err != nil {
			return fmt.Errorf("contacts: %w", err)
		}
		s.sum.Orphans = n
		if n == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	s.judge()
	return nil
}

// judge fills the summary's changes, pass and problems.
func (s *soak) judge() {
	sm := &s.sum
	sm.Faults = s.n
	for _, f := range matrix {
		if n := s.byName[f.name]; n > 0 {
			sm.ByFault = append(sm.ByFault, fmt.Sprintf("%s×%d", f.name, n))
		}
	}
	if sm.Base == nil || sm.End == nil {
		sm.Problems = append(sm.Problems, "no baseline or end sample")
	} else {
		sm.HeapPct = pct(float64(sm.Base.Heap), float64(sm.End.Heap))
		sm.LivePct = pct(float64(sm.Base.HeapAlloc+sm.Base.StackInuse), float64(sm.End.HeapAlloc+sm.End.StackInuse))
		sm.GorPct = pct(float64(sm.Base.Goroutines), float64(sm.End.Goroutines))
		sm.FDsPct = pct(float64(sm.Base.FDs), float64(sm.End.FDs))
		for _, c := range []struct {
			what string
			v    float64
		}{{"heap", sm.HeapPct}, {"goroutines", sm.GorPct}, {"fds", sm.FDsPct}} {
			if c.v > 5 || c.v < -5 {
				sm.Problems = append(sm.Problems, fmt.Sprintf("%s changed %+.1f %% (limit 5 %%)", c.what, c.v))
			}
		}
	}
	for _, c := range []struct {
		what string
		n    int
	}{{"stuck", sm.Stuck}, {"orphan bindings", sm.Orphans}, {"stale registered", sm.Stale}, {"false deaths", sm.FalseDeaths}} {
		if c.n != 0 {
			sm.Problems = append(sm.Problems, fmt.Sprintf("%s %d", c.what, c.n))
		}
	}
	sm.Pass = len(sm.Problems) == 0
}

// aorOf is trunk i's address-of-record.
func aorOf(i int) string { return fmt.Sprintf("sip:s%05d@relink.test", i) }

func pct(base, end float64) float64 {
	if base == 0 {
		return 0
	}
	return round((end - base) / base * 100)
}

func round(f float64) float64 { return math.Round(f*1000) / 1000 }

// loadAvg is the machine's load average (1, 5, 15 min).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func listenLoopback() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
