// Command incident replays a provider outage end to end, on embedded parts
// (no external server, no root), and shows what relink does for a gateway.
//
//	go run ./examples/incident
//	go run ./examples/incident -json
//	go run ./examples/incident -plot incident.svg
//
// Two populations of N trunks (default 1,000) live through the same outage
// at the same time, each against its own in-process registrar of the same
// capacity (C = 100 REGISTER/s, answering the excess with 503 +
// Retry-After) behind its own freeze proxy:
//
//   - relink: a sip.Fleet with its default configuration;
//   - naive: sipgo with its defaults, sipgo's DoDigestAuth, a refresh at 90 %
//     of the granted expiry and, on any failure, another attempt at once —
//     what a gateway without relink does.
//
// Timeline: everyone registers (the registrars grant 24 s bindings); the
// path goes silent — no FIN, no RST — for the outage (25 s), long enough
// for the bindings to expire at the registrars; the path comes back, the
// far end treating the connections it had as -farend says:
//
//   - rst (default): it restarted or failed over, lost them, and answers
//     the next segment on each with an RST;
//   - blackhole: they stay in a black hole (a firewall or NAT that lost
//     their state): nothing answers, the client's kernel would give up
//     after tcp_retries2 (~15.5 min), emulated without root by a proxy that
//     reads and drops;
//   - hung: its application hangs on them with TCP alive.
//
// New connections are served in every mode. With the defaults, relink's
// trunks notice the silence (within its 15 s bound) before any of them
// refreshes, so no REGISTER is in flight when the flow is declared dead; a
// grant of 15 s (-grant 15s) makes the refreshes fall inside the silent
// period instead. One line a second shows each population's
// live registrations, the registrar's load against its capacity and the
// 503s; the closing table gives detection times against relink's bound,
// the time from the restore to full recovery against N/C (the registrar
// cannot go faster), REGISTERs per trunk, 503s, and the trunks still stuck
// at the end: the ones that would need a manual restart.
//
// Each population is watched until its own timers have fired. Relink's
// watch ends 2 s after its last trunk is back: its figures are taken and
// its trunks stop. The naive gateway's REGISTER sent into the silence waits
// for sipgo's Timer F (32 s) before it fails and is retried, so its watch
// goes on until every naive trunk has recovered or failed and retried,
// then until the population is back or has had 1.5 × N/C more (-after
// bounds both). The closing table says where the naive gateway ends with
// the far end chosen, and why.
//
// With -procs P the relink population runs in P operating-system processes
// (this program re-executed as workers), each a sip.Fleet with its share of
// the trunks, whose gates keep one state on Redis (backoff/fleetgate): one
// pace, one Retry-After, one scout for the P processes. Redis is an
// embedded Redis-compatible server (miniredis) unless -redis ADDR names
// one; the table adds a row per process.
//
// With -registrar URI -user PREFIX -pass P, the relink population runs
// against a real registrar over TCP (through the freeze proxy; trunk i
// registers as PREFIX<i>); the naive one stays embedded.
//
// Flags: -trunks N (1000), -capacity C (100), -outage (25s), -grant (24s,
// the longest binding the embedded registrars grant), -keepalive (relink's
// TrunkConfig.KeepAlive; 0 keeps its 10 s default, so the detection bound is
// 15 s), -after (the longest watch after the restore; 0: Timer F + 2.5 ×
// N/C within 5–25 s, ending earlier as above), -farend (rst), -procs (0:
// one process), -redis, -json (the closing table as one JSON object on
// stdout, the timeline on stderr), -plot FILE.svg (a chart of the
// timeline), -v (every relink state change on stderr), and -registrar,
// -user, -pass.
//
// Before the outage the registrars admit everything, so that the warm-up
// (2 N registrations, each with a challenge) takes a second instead of
// 2 N/C; their capacity C applies from then on.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"time"
)

func main() {
	// sipgo logs through slog.Default; the demo's output is its own.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var err error
	if os.Getenv(workerEnv) == "1" {
		err = workerMain(ctx, os.Args[1:], os.Stdin, os.Stdout)
	} else {
		err = mainErr(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, err)
		}
		os.Exit(2)
	}
}

// mainErr parses args and runs the incident, writing the report to stdout
// (the timeline goes to stderr with -json, so that stdout is one JSON
// object).
func mainErr(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("incident", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.IntVar(&cfg.Trunks, "trunks", 1000, "trunks per population (N)")
	fs.Float64Var(&cfg.Capacity, "capacity", 100, "REGISTERs per second each registrar serves (C); the excess gets 503 + Retry-After")
	fs.DurationVar(&cfg.Outage, "outage", 25*time.Second, "how long the path stays silent")
	fs.DurationVar(&cfg.KeepAlive, "keepalive", 0, "relink's TrunkConfig.KeepAlive (0: its default, 10 s; detection bound = keepalive + 5 s)")
	fs.DurationVar(&cfg.Grant, "grant", 24*time.Second, "longest binding the embedded registrars grant (shorter than the outage, so bindings expire during it)")
	fs.DurationVar(&cfg.After, "after", 0, "the longest watch after the restore (0: sipgo's Timer F + 2.5 × N/C within 5–25 s; it stops earlier once relink is back and every naive trunk has acted)")
	fs.StringVar(&cfg.FarEnd, "farend", farRST, "what the far end does with the old connections at the restore: "+farEndNames())
	fs.IntVar(&cfg.Procs, "procs", 0, "run the relink population in this many processes sharing one gate state on Redis (0: in this process)")
	fs.StringVar(&cfg.Redis, "redis", "", "with -procs: host:port of the Redis to share (default: an embedded Redis-compatible server)")
	verbose := fs.Bool("v", false, "print every state change of the relink trunks to stderr")
	asJSON := fs.Bool("json", false, "print the closing table as one JSON object (the timeline goes to stderr)")
	plot := fs.String("plot", "", "write an SVG chart of the timeline to this file")
	fs.StringVar(&cfg.Registrar, "registrar", "", "run the relink population against this real registrar (TCP URI) instead of the embedded one")
	fs.StringVar(&cfg.User, "user", "", "with -registrar: username prefix (trunk i registers as PREFIX<i>; the exact name with -trunks 1)")
	fs.StringVar(&cfg.Pass, "pass", "", "with -registrar: digest password")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || cfg.Trunks <= 0 || !(cfg.Capacity > 0) || cfg.Outage <= 0 || cfg.KeepAlive < 0 || cfg.Grant < time.Second || cfg.After < 0 {
		fs.Usage()
		return fmt.Errorf("%w: -trunks, -capacity, -outage must be positive, -grant at least 1 s, no arguments", errUsage)
	}
	if cfg.Registrar != "" && cfg.User == "" {
		return fmt.Errorf("%w: -registrar needs -user", errUsage)
	}
	if _, ok := farEnds[cfg.FarEnd]; !ok {
		return fmt.Errorf("%w: -farend %q: want %s", errUsage, cfg.FarEnd, farEndNames())
	}
	if cfg.Procs < 0 || cfg.Procs > cfg.Trunks || (cfg.Redis != "" && cfg.Procs == 0) {
		return fmt.Errorf("%w: -procs must be within 0–trunks, and -redis needs -procs", errUsage)
	}
	cfg.Live = stdout
	if *verbose {
		cfg.Events = stderr
	}
	if *asJSON {
		cfg.Live = stderr
	}
	start := time.Now()
	o, err := run(ctx, cfg)
	if err != nil {
		return err
	}
	if *plot != "" {
		f, err := os.Create(*plot)
		if err != nil {
			return err
		}
		if err := writeSVG(f, o); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(o.Summary)
	}
	printTable(stdout, o)
	fmt.Fprintf(stdout, "\nran in %s", elapsed(time.Since(start)))
	if *plot != "" {
		fmt.Fprintf(stdout, "; chart: %s", *plot)
	}
	fmt.Fprintln(stdout)
	return nil
}
