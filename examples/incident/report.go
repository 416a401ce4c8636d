package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// popSummary is one population's line of the closing table; -json prints
// it under "relink" and "naive". Times are seconds; null means "never"
// (nothing detected, or not every trunk recovered, or no bound).
type popSummary struct {
	// Proc numbers a process of -procs (processes[]); absent otherwise.
	Proc   *int `json:"proc,omitempty"`
	Trunks int  `json:"trunks"`
	// Recovered counts the trunks registered again after the restore and
	// still registered at the end (a live binding at the embedded
	// registrar; the trunk's own view with a real one).
	Recovered int `json:"recovered"`
	Stuck     int `json:"stuck"` // trunks − recovered
	// Detected counts the trunks that noticed the outage (left Registered,
	// or saw a request fail) before the end of the run.
	Detected int `json:"detected"`
	// DetectP50S and DetectP99S are quantiles over all the trunks, from
	// the freeze; a trunk that never noticed counts as infinitely late, so
	// null means that more than half (1 %) never noticed.
	DetectP50S *float64 `json:"detect_p50_s"`
	DetectP99S *float64 `json:"detect_p99_s"`
	BoundS     *float64 `json:"bound_s"` // relink's detection bound; null for naive (none)
	// RecoverS is from the restore to the last trunk registered again; null
	// unless every trunk recovered.
	RecoverS     *float64 `json:"recover_s"`
	RatioToLimit *float64 `json:"ratio_to_limit"` // recover_s ÷ (N/C)
	// AttemptsPerTrunk is the REGISTER transactions a trunk sent from the
	// freeze until it was registered again (until the end if it was not),
	// on average: what recovery cost (a challenge round trip counts two).
	AttemptsPerTrunk float64 `json:"attempts_per_trunk"`
	Rejected         int     `json:"rejected"` // 503s received from the freeze to the end
	// LiveAtEnd is the registrar's count of AoRs with a live binding at the
	// end (−1: not known, a real registrar).
	LiveAtEnd int `json:"live_at_end"`
	// StuckSample describes a few stuck trunks: their last state change.
	StuckSample []string `json:"stuck_sample,omitempty"`
	// Ends says, for the naive population, where it ends with this far
	// end and why (its own timers, the kernel's), and what it did here.
	Ends string `json:"ends,omitempty"`
}

// summary is the closing table.
type summary struct {
	Trunks    int     `json:"trunks"`
	Capacity  float64 `json:"capacity"`
	LimitS    float64 `json:"limit_s"` // N/C
	OutageS   float64 `json:"outage_s"`
	GrantS    float64 `json:"grant_s"`
	KeepAlive string  `json:"keepalive_note,omitempty"`
	Registrar string  `json:"registrar,omitempty"`
	// FarEnd is the far end's mode (-farend: rst, blackhole, hung) and
	// FarEndNote what it does with the old connections.
	FarEnd     string `json:"farend"`
	FarEndNote string `json:"farend_note"`
	// Procs is the number of relink processes (-procs; absent: one, this
	// one), Redis where their shared gate state lives, and Processes the
	// figures of each (rejected: the 503s its gate saw).
	Procs     int          `json:"procs,omitempty"`
	Redis     string       `json:"redis,omitempty"`
	Processes []popSummary `json:"processes,omitempty"`
	Relink    popSummary   `json:"relink"`
	Naive     popSummary   `json:"naive"`
}

func summarize(recs []*trunkRec, registeredAtEnd []bool, m *marks, rejected uint64,
	cfg config, bound *float64, liveAtEnd int) popSummary {
	n := len(recs)
	freeze, restore := m.freeze.Load(), m.restore.Load()
	var det []float64
	var stuck []string
	recovered, last := 0, int64(0)
	var tx uint64
	detected := 0
	for i, r := range recs {
		tx += r.recoveryTx()
		if d := r.detect.Load(); d != 0 {
			det = append(det, float64(d-freeze)/1e9)
			detected++
		} else {
			det = append(det, math.Inf(1))
		}
		if rc := r.recover.Load(); rc != 0 && registeredAtEnd[i] {
			recovered++
			last = max(last, rc)
		} else if len(stuck) < 5 {
			why := "no state change after the freeze"
			if l := r.last.Load(); l != nil {
				why = *l
			}
			if rc != 0 {
				why = "registered after the restore, not at the end; last: " + why
			}
			stuck = append(stuck, r.name+": "+why)
		}
	}
	s := popSummary{
		Trunks:           n,
		Recovered:        recovered,
		Stuck:            n - recovered,
		Detected:         detected,
		BoundS:           bound,
		AttemptsPerTrunk: round3(float64(tx) / float64(max(n, 1))),
		Rejected:         int(rejected),
		LiveAtEnd:        liveAtEnd,
		StuckSample:      stuck,
	}
	if len(det) > 0 {
		slices.Sort(det)
		if q := quantile(det, 0.50); !math.IsInf(q, 1) {
			s.DetectP50S = ptr(round3(q))
		}
		if q := quantile(det, 0.99); !math.IsInf(q, 1) {
			s.DetectP99S = ptr(round3(q))
		}
	}
	if n > 0 && recovered == n {
		rs := float64(last-restore) / 1e9
		s.RecoverS = ptr(round3(rs))
		s.RatioToLimit = ptr(round3(rs / cfg.limit().Seconds()))
	}
	return s
}

// quantile is the nearest-rank quantile of sorted xs.
func quantile(xs []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

func ptr(f float64) *float64 { return &f }

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func secs(p *float64) string {
	if p == nil {
		return "never"
	}
	return fmt.Sprintf("%.2f s", *p)
}

// printTable writes the closing table.
func printTable(w io.Writer, o *outcome) {
	s := o.Summary
	r, n := s.Relink, s.Naive
	limit := s.LimitS
	fmt.Fprintf(w, "\nclosing table — N = %d per population, C = %.0f REGISTER/s, N/C = %.1f s, outage %.0f s, grant %.0f s\n",
		s.Trunks, s.Capacity, limit, s.OutageS, s.GrantS)
	fmt.Fprintf(w, "far end: %s\n", s.FarEndNote)
	if s.Registrar != "" {
		fmt.Fprintf(w, "relink against the real registrar %s (its capacity unknown here; 503s counted by the client)\n", s.Registrar)
	}
	if s.Procs > 0 {
		fmt.Fprintf(w, "relink in %d processes sharing one gate state on %s\n", s.Procs, s.Redis)
	}
	row := func(name, a, b string) { fmt.Fprintf(w, "  %-34s %-22s %-22s\n", name, a, b) }
	row("", "relink (sip.Fleet)", "naive (sipgo)")
	row("recovered", fmt.Sprintf("%d/%d (%.0f %%)", r.Recovered, r.Trunks, pct(r.Recovered, r.Trunks)),
		fmt.Sprintf("%d/%d (%.0f %%)", n.Recovered, n.Trunks, pct(n.Recovered, n.Trunks)))
	row("stuck (not registered at the end)", fmt.Sprint(r.Stuck), fmt.Sprint(n.Stuck))
	row("live bindings at the registrar", live(r.LiveAtEnd), live(n.LiveAtEnd))
	row("detected the outage", fmt.Sprintf("%d/%d", r.Detected, r.Trunks), fmt.Sprintf("%d/%d", n.Detected, n.Trunks))
	row("detection p50 / p99 (from freeze)", secs(r.DetectP50S)+" / "+secs(r.DetectP99S), secs(n.DetectP50S)+" / "+secs(n.DetectP99S))
	row("detection bound", secs(r.BoundS), "none")
	row("restore → all registered", withRatio(r), withRatio(n))
	row("  (physical limit N/C)", fmt.Sprintf("%.2f s", limit), fmt.Sprintf("%.2f s", limit))
	row("REGISTERs per trunk to recover", fmt.Sprintf("%.2f", r.AttemptsPerTrunk), fmt.Sprintf("%.2f", n.AttemptsPerTrunk))
	row("503s received (from freeze)", fmt.Sprintf("%d (%.1f %% of N)", r.Rejected, pct(r.Rejected, r.Trunks)),
		fmt.Sprintf("%d (%.1f %% of N)", n.Rejected, pct(n.Rejected, n.Trunks)))
	for _, l := range r.StuckSample {
		fmt.Fprintf(w, "  relink not registered: %s\n", l)
	}
	printProcesses(w, s.Processes)
	fmt.Fprintf(w, "\n  naive ends: %s\n\n", n.Ends)
	goals := []struct {
		ok   bool
		text string
	}{
		{r.Recovered == r.Trunks && r.Stuck == 0, "relink: 100 % recovered, none stuck"},
		{r.DetectP99S != nil && r.BoundS != nil && *r.DetectP99S <= *r.BoundS+0.1, "relink: detection p99 ≤ bound + 100 ms"},
		{r.RatioToLimit != nil && *r.RatioToLimit <= 1.3, "relink: recovery ≤ 1.3 × N/C"},
		{float64(r.Rejected) <= 0.05*float64(r.Trunks), "relink: 503s ≤ 5 % of N"},
	}
	for _, g := range goals {
		mark := "✗"
		if g.ok {
			mark = "✓"
		}
		fmt.Fprintf(w, "  %s %s\n", mark, g.text)
	}
}

// printProcesses writes one row per relink process.
func printProcesses(w io.Writer, ps []popSummary) {
	if len(ps) == 0 {
		return
	}
	fmt.Fprintf(w, "\n  %-8s %-10s %-9s %-15s %-24s %-12s %s\n", "process", "recovered", "detected", "detect p99", "restore → all registered", "REG/trunk", "503s (its gate)")
	for _, p := range ps {
		fmt.Fprintf(w, "  %-8d %-10s %-9s %-15s %-24s %-12.2f %d\n", *p.Proc,
			fmt.Sprintf("%d/%d", p.Recovered, p.Trunks), fmt.Sprintf("%d/%d", p.Detected, p.Trunks),
			secs(p.DetectP99S), withRatio(p), p.AttemptsPerTrunk, p.Rejected)
	}
}

func withRatio(p popSummary) string {
	if p.RecoverS == nil {
		return fmt.Sprintf("never (%d stuck)", p.Stuck)
	}
	return fmt.Sprintf("%.2f s (%.2f × N/C)", *p.RecoverS, *p.RatioToLimit)
}

func live(n int) string {
	if n < 0 {
		return "unknown"
	}
	return fmt.Sprint(n)
}

func pct(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

// elapsed formats a duration for the run's last line.
func elapsed(d time.Duration) string { return d.Round(100 * time.Millisecond).String() }
