// Command restore measures how soon a restored registrar hears from trunks
// that lost it: P operating-system processes, each with ONE relink trunk
// (sip.NewUA + sip.NewTrunk over TCP, the defaults otherwise), register with
// a real Kamailio in a network namespace; the path is black-holed (nft DROP
// both ways) for -hole (20 s), Kamailio is restarted inside the hole (its
// bindings are lost), and the path is restored. The figure is, per trunk,
// the time from the restore to the first REGISTER that reaches the restarted
// Kamailio, measured at the registrar side.
//
//	sudo go run ./internal/bench/restore -json              # P = 20, one round
//	sudo go run ./internal/bench/restore -procs 20 -rounds 10 -json
//
// It needs root, ip, nft and kamailio; without them it says why and exits 0
// (status 2 instead when RELINK_REQUIRE_NETNS=1).
//
// Measurement: an AF_PACKET socket on the server namespace's veth sees every
// frame with the kernel's receive timestamp, before netfilter (so REGISTERs
// the black hole drops are seen too). A trunk's first REGISTER after the
// restore is the first segment whose payload starts a REGISTER with the
// trunk's From user, on a connection the restarted Kamailio accepted after
// the restore (its SYN+ACK seen): a REGISTER retransmitted on a connection
// of the old Kamailio reaches the host but not the registrar. The restore
// lifts the client side's rule first, then the server side's: the clock
// starts when that last removal begins (restore_ms, the time it takes, is
// inside the figure, so the figure is an upper bound).
//
// With -json the program prints one JSON object per round and, when there is
// more than one round, one with "round": 0 pooling every trunk of every
// round: procs, restore_first_register_p50_s, restore_first_register_p99_s,
// restore_first_register_max_s, recovered, stuck (trunks not Registered
// again by -cap after the restore, those that never left Registered
// included), slowest_trunk, slowest_recover_s (that trunk's time from the
// restore to Registered), recover_p50_s, recover_p99_s and details. Each
// trunk's debug log is kept under -logs (a temporary directory by default,
// removed unless a trunk took longer than -keep-logs-over to recover). The
// goal of issue 10: restore_first_register_p99_s ≤ 1.2.
//
// Exit status: 0, or 1 when a trunk was stuck, 2 on a setup error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"sort"
	"syscall"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
)

// Result is one round's figures (Round 0: every round pooled).
type Result struct {
	Round                  int     `json:"round"`
	Procs                  int     `json:"procs"`
	FirstRegisterP50S      float64 `json:"restore_first_register_p50_s"`
	FirstRegisterP99S      float64 `json:"restore_first_register_p99_s"`
	FirstRegisterMaxS      float64 `json:"restore_first_register_max_s"`
	Recovered              int     `json:"recovered"`
	Stuck                  int     `json:"stuck"`
	SlowestTrunk           string  `json:"slowest_trunk"`
	SlowestRecoverS        float64 `json:"slowest_recover_s"`
	SlowestFirstRegisterS  float64 `json:"slowest_first_register_s"`
	RecoverP50S            float64 `json:"recover_p50_s"`
	RecoverP99S            float64 `json:"recover_p99_s"`
	NoRegisterSeen         int     `json:"no_register_seen"` // trunks with no REGISTER at the restarted Kamailio
	RecoveredOver10S       int     `json:"recovered_over_10s"`
	HoleS                  float64 `json:"hole_s"`
	RestartAfterS          float64 `json:"restart_after_s"`
	RestoreMs              float64 `json:"restore_ms"`
	RegistersInHole        int     `json:"registers_in_hole"` // REGISTER segments the black hole dropped
	Measurement            string  `json:"measurement"`
	SlowestLog             string  `json:"slowest_log,omitempty"`
	firstRegs, recoverDurs []float64
}

// options are the command's flags.
type options struct {
	procs, rounds                  int
	hole, restartAfter, capAfter   time.Duration
	keepAlive, timeout, reqTimeout time.Duration
	logDir                         string
	keepLogsOver                   time.Duration
	json                           bool
}

func main() {
	if spec := os.Getenv(workerEnv); spec != "" {
		os.Exit(runWorker(spec, os.Stdin, os.Stdout))
	}
	var o options
	flag.IntVar(&o.procs, "procs", 20, "worker processes, one trunk each")
	flag.IntVar(&o.rounds, "rounds", 1, "rounds (each on a fresh Kamailio and fresh processes)")
	flag.DurationVar(&o.hole, "hole", 20*time.Second, "how long the path stays black-holed")
	flag.DurationVar(&o.restartAfter, "restart-after", 2*time.Second, "when, after the cut, Kamailio is restarted (inside the hole)")
	flag.DurationVar(&o.capAfter, "cap", 90*time.Second, "a trunk not Registered again this long after the restore is stuck")
	flag.DurationVar(&o.keepAlive, "keepalive", 0, "sip.TrunkConfig.KeepAlive (0: sip's default)")
	flag.DurationVar(&o.timeout, "timeout", 0, "sip.TrunkConfig.KeepAliveTimeout (0: sip's default)")
	flag.DurationVar(&o.reqTimeout, "request-timeout", 0, "sip.TrunkConfig.RequestTimeout (0: sip's default)")
	flag.StringVar(&o.logDir, "logs", "", "keep every trunk's debug log in this directory (default: a temporary one)")
	flag.DurationVar(&o.keepLogsOver, "keep-logs-over", 5*time.Second, "keep the temporary logs when a trunk took longer than this to recover")
	flag.BoolVar(&o.json, "json", false, "print one JSON object per round (and one pooled)")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "restore:", err)
		os.Exit(2)
	}
	if err := available(); err != nil {
		if os.Getenv(netns.RequireEnv) == "1" {
			fmt.Fprintf(os.Stderr, "restore: %v (and %s=1)\n", err, netns.RequireEnv)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "restore: skipped: %v\n", err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	status, err := run(ctx, &o, func(r Result) { printResult(&o, r) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "restore:", err)
		os.Exit(2)
	}
	os.Exit(status)
}

// available says why the bench cannot run here, or nil.
func available() error {
	if err := netns.Available(); err != nil {
		return err
	}
	return kamailio.Available()
}

func (o *options) validate() error {
	switch {
	case o.procs <= 0 || o.rounds <= 0:
		return errors.New("-procs and -rounds must be positive")
	case o.hole <= 0 || o.capAfter <= 0:
		return errors.New("-hole and -cap must be positive")
	case o.restartAfter < 0 || o.restartAfter >= o.hole:
		return errors.New("-restart-after must be within the hole")
	}
	return nil
}

// run measures every round, reports each, and the pooled figures when there
// is more than one. The status is 1 when a trunk was stuck.
func run(ctx context.Context, o *options, report func(Result)) (int, error) {
	p, err := netns.New()
	if err != nil {
		return 0, err
	}
	defer p.Close()
	logs, keep, err := logDir(o)
	if err != nil {
		return 0, err
	}
	defer func() {
		if !*keep {
			os.RemoveAll(logs)
		}
	}()
	all := Result{Procs: o.procs, HoleS: o.hole.Seconds(), RestartAfterS: o.restartAfter.Seconds(), Measurement: measurement}
	status := 0
	for i := 1; i <= o.rounds; i++ {
		r, err := runRound(ctx, o, p, i, logs)
		if err != nil {
			return 0, fmt.Errorf("round %d: %w", i, err)
		}
		if r.Stuck > 0 {
			status = 1
		}
		if r.SlowestRecoverS > o.keepLogsOver.Seconds() || r.Stuck > 0 {
			*keep = true
		}
		report(r)
		all.merge(r)
	}
	if o.rounds > 1 {
		all.summarize()
		report(all)
	}
	if *keep && !o.json {
		fmt.Printf("trunk logs kept in %s\n", logs)
	}
	return status, nil
}

// logDir returns the directory of the trunks' logs and whether to keep it.
func logDir(o *options) (string, *bool, error) {
	keep := o.logDir != ""
	if keep {
		return o.logDir, &keep, os.MkdirAll(o.logDir, 0o755)
	}
	d, err := os.MkdirTemp("", "relink-restore-")
	return d, &keep, err
}

const measurement = "registrar side: AF_PACKET capture on the server namespace's veth (kernel timestamps), " +
	"first REGISTER per From user on a connection the restarted Kamailio accepted after the restore"

// merge adds a round's trunks to the pooled result.
func (r *Result) merge(x Result) {
	r.Recovered += x.Recovered
	r.Stuck += x.Stuck
	r.NoRegisterSeen += x.NoRegisterSeen
	r.RegistersInHole += x.RegistersInHole
	r.RestoreMs = max(r.RestoreMs, x.RestoreMs)
	r.firstRegs = append(r.firstRegs, x.firstRegs...)
	r.recoverDurs = append(r.recoverDurs, x.recoverDurs...)
	if x.SlowestRecoverS > r.SlowestRecoverS || r.SlowestTrunk == "" {
		r.SlowestTrunk = fmt.Sprintf("round %d %s", x.Round, x.SlowestTrunk)
		r.SlowestRecoverS, r.SlowestFirstRegisterS, r.SlowestLog = x.SlowestRecoverS, x.SlowestFirstRegisterS, x.SlowestLog
	}
	r.Procs = max(r.Procs, x.Procs)
}

// summarize fills the percentiles from the pooled samples.
func (r *Result) summarize() {
	r.FirstRegisterP50S, r.FirstRegisterP99S, r.FirstRegisterMaxS = quantiles(r.firstRegs)
	r.RecoverP50S, r.RecoverP99S, _ = quantiles(r.recoverDurs)
	r.RecoveredOver10S = 0
	for _, d := range r.recoverDurs {
		if d > 10 {
			r.RecoveredOver10S++
		}
	}
}

// quantiles returns the nearest-rank p50, p99 and the maximum of xs (zeros
// when empty).
func quantiles(xs []float64) (p50, p99, mx float64) {
	if len(xs) == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(0.50), rank(0.99), s[len(s)-1]
}

func printResult(o *options, r Result) {
	if o.json {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
		return
	}
	name := fmt.Sprintf("round %d", r.Round)
	if r.Round == 0 {
		name = "all rounds"
	}
	fmt.Printf("%s: %d trunks (one per process), hole %.0f s, Kamailio restarted at +%.0f s\n",
		name, r.Recovered+r.Stuck, r.HoleS, r.RestartAfterS)
	fmt.Printf("  first REGISTER at the registrar after the restore: p50 %.3f s, p99 %.3f s, max %.3f s (goal p99 ≤ 1.2 s: %s)\n",
		r.FirstRegisterP50S, r.FirstRegisterP99S, r.FirstRegisterMaxS, verdict(r.FirstRegisterP99S <= 1.2 && r.NoRegisterSeen == 0))
	fmt.Printf("  Registered again: %d, stuck %d; recover p50 %.2f s, p99 %.2f s; slowest %s: %.2f s (first REGISTER %.2f s)\n",
		r.Recovered, r.Stuck, r.RecoverP50S, r.RecoverP99S, r.SlowestTrunk, r.SlowestRecoverS, r.SlowestFirstRegisterS)
	fmt.Printf("  no REGISTER seen: %d; recovered after 10 s: %d; REGISTERs dropped in the hole: %d; restore took %.0f ms\n",
		r.NoRegisterSeen, r.RecoveredOver10S, r.RegistersInHole, r.RestoreMs)
	if r.SlowestLog != "" {
		fmt.Printf("  slowest trunk's log: %s\n", r.SlowestLog)
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
