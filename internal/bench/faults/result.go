package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"
)

// Result is one row of the matrix; -json prints one per line.
type Result struct {
	Fault  string `json:"fault"`
	Env    string `json:"env"`
	Trunks int    `json:"trunks"`
	Links  int    `json:"links"`
	// DetectP99S is the 99th percentile of the detection times (null when
	// the row detects nothing); Undetected counts trunks and Links that
	// never noticed the fault.
	DetectP99S *float64 `json:"detect_p99_s"`
	DetectMaxS *float64 `json:"detect_max_s"`
	Undetected int      `json:"undetected"`
	// The same, for the trunks and the Links apart.
	DetectTrunksP99S *float64 `json:"detect_trunks_p99_s,omitempty"`
	DetectLinksP99S  *float64 `json:"detect_links_p99_s,omitempty"`
	BoundS           *float64 `json:"bound_s"`
	// Recovered counts trunks and Links recovered, of Trunks + Links.
	Recovered       int      `json:"recovered"`
	RecoverS        float64  `json:"recover_s"`
	RatioToLimit    *float64 `json:"ratio_to_limit"`
	Rejected503     uint64   `json:"rejected_503"`
	OrphanBindings  int      `json:"orphan_bindings"`
	StaleRegistered int      `json:"stale_registered"`
	FalseDeaths     int      `json:"false_deaths"`
	LostReplies     int      `json:"lost_replies"`
	Stuck           int      `json:"stuck"`
	// StopS is how long the fleet's stop took (its Run's return after the
	// cancel: the trunks' unregistrations); Stop503 the 503s the
	// registrars answered meanwhile. Null and 0 where no fleet stopped.
	StopS   *float64 `json:"stop_s"`
	Stop503 uint64   `json:"stop_503"`
	// Pass says whether the row meets issue 14's "must show"; Problems
	// says what it missed.
	Pass     bool     `json:"pass"`
	Problems []string `json:"problems,omitempty"`
	// Registers is how many REGISTERs the registrars received from the cut
	// to the end of the recovery.
	Registers uint64  `json:"registers"`
	HoleS     float64 `json:"hole_s"`
	Note      string  `json:"note,omitempty"`
	Skipped   string  `json:"skipped,omitempty"`
	Setup     string  `json:"setup_error,omitempty"`
}

// row is one fault of the matrix.
type row struct {
	name  string
	about string
	// needs, when set, says what the row needs that the embedded
	// environment lacks: the row is reported skipped.
	needs string
	run   func(ctx context.Context, o *options) (*world, error)
}

// runRow runs one row and judges it.
func runRow(ctx context.Context, o *options, r row) Result {
	res := Result{Fault: r.name, Env: "embedded", Trunks: o.trunks, Links: o.links}
	if r.needs != "" {
		res.Env = ""
		res.Skipped = r.needs
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	w, err := r.run(ctx, o)
	if skip := (*skipError)(nil); errors.As(err, &skip) {
		res.Env, res.Skipped = "", skip.why
		return res
	}
	if w != nil {
		w.fill(&res)
		w.close()
	}
	if err != nil {
		res.Setup = err.Error()
		res.Problems = append(res.Problems, "error: "+err.Error())
	}
	judge(&res)
	return res
}

// judge sets Pass and Problems from issue 14's "must show".
func judge(r *Result) {
	all := r.Trunks + r.Links
	if r.Recovered != all {
		r.Problems = append(r.Problems, fmt.Sprintf("recovered %d of %d", r.Recovered, all))
	}
	for _, c := range []struct {
		n    int
		what string
	}{{r.Stuck, "stuck"}, {r.OrphanBindings, "orphan bindings"}, {r.StaleRegistered, "stale registered"}, {r.FalseDeaths, "false deaths"}, {r.LostReplies, "lost replies"}, {r.Undetected, "undetected"}} {
		if c.n != 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%s %d", c.what, c.n))
		}
	}
	if r.BoundS != nil && r.DetectP99S != nil && *r.DetectP99S > *r.BoundS+0.1 {
		r.Problems = append(r.Problems, fmt.Sprintf("detect p99 %.2f s over bound %.2f s", *r.DetectP99S, *r.BoundS))
	}
	r.Pass = len(r.Problems) == 0
}

// p99 returns the 99th percentile (nearest rank) of xs and its maximum.
func p99(xs []float64) (float64, float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(0.99*float64(len(s)))) - 1
	return s[max(i, 0)], s[len(s)-1]
}

func secs(d time.Duration) float64 { return math.Round(d.Seconds()*1000) / 1000 }

func ptr(f float64) *float64 { return &f }
