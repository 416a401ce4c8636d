// Command faults runs relink through a matrix of faults (issue 14) and prints
// one row per fault: how fast each fault was noticed, whether every trunk and
// Link recovered, and what was left behind.
//
//	go run ./internal/bench/faults -json               # every row
//	go run ./internal/bench/faults -list               # the rows' names
//	go run ./internal/bench/faults -fault peer-rst -trunks 50 -links 10
//
// Environment (field env), per row: "embedded" runs in this process on
// loopback without root: sip.Fleet trunks registered with the embedded
// registrar (internal/registrar, the one behind sip/siptest) and conn.Links
// to an echo server, each path through the freeze proxy of
// internal/faultproxy. "netns+kamailio" (root, Kamailio, ip and nft): Kamailio
// and the echo server in one network namespace, trunks and Links in another,
// nft dropping packets (a real black hole, or random loss); the black-hole
// rows run so with -env auto (the default) when they can, the TLS/WSS, DNS
// (dnsmasq) and loss rows only so. "kamailio+proxy": Kamailio behind the
// freeze proxy. "embedded+redis": the fleet's gate on a real redis-server
// (backoff/fleetgate). A row that cannot run here is printed with a
// "skipped" field saying what it needs.
//
// Each row: the trunks register and the Links connect (warm-up), the fault
// starts (cut), the path is restored (restore) and the program waits up to
// -cap for every trunk to be registered again (and the registrar to hold its
// binding) and every Link to be ready with an echo answered after the
// restore; the path is then watched for -settle; finally trunks and Links are
// stopped and the registrar's bindings counted.
//
// Fields: detect_p99_s, the 99th percentile over trunks and Links of the time
// from the cut to leaving Registered/Ready (undetected: those that never
// did); bound_s, the configured bound the detection must meet (null where the
// row has none): KeepAlive + KeepAliveTimeout for a silent path, KeepAlive
// for a reset or closed one (on Linux sip hears of the peer's RST or FIN at
// once, from the kernel; elsewhere at the flow's next probe); recovered, trunks and Links recovered (of trunks + links);
// recover_s, from the restore to the last one recovered; ratio_to_limit,
// recover_s ÷ (trunks ÷ capacity) where the registrar has a capacity;
// rejected_503, 503s the registrar answered from the cut on;
// orphan_bindings, bindings left at the registrars after every trunk stopped;
// stale_registered, trunks claiming Registered while the registrar holds no
// binding for them (checked after the recovery); false_deaths, flows declared
// dead (sip.UAConfig.OnFlowDeath, Links leaving Ready) while the path was
// fine (before the cut, and after the restore plus the detection bound);
// lost_replies, Link echoes whose reply never came on a connection not
// declared dead, or came wrong; stuck, trunks and Links not recovered by the
// cap or whose Run did not return within maxStop (65 s: sip's cap on an
// unregistration, 12 × UnregisterTimeout, and a margin) of the stop;
// stop_s, how long the fleet's stop took (its trunks unregister through the
// registrar's gate, at the registrar's pace), and stop_503, the 503s the
// registrars answered during it.
//
// testdata/matrix.jsonl keeps the last full run the README's table comes
// from: a first line with the command, date and load average, then one row
// per line as -json prints it.
//
// The exit status is 1 when a row fails what issue 14 asks (recovered = all,
// stuck, orphans, stale and false deaths 0, detection within bound + 0.1 s),
// 2 on a setup error.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
)

// options are the command's flags.
type options struct {
	trunks    int
	links     int
	keepAlive time.Duration // sip KeepAlive and conn ProbeInterval
	timeout   time.Duration // sip KeepAliveTimeout and conn ProbeTimeout
	capAfter  time.Duration
	settle    time.Duration
	lossFor   time.Duration
	// liftAtStop lifts a registrar's capacity before the fleet stops, to
	// tell orphans left by the stop's unregistrations meeting the capacity
	// from others.
	liftAtStop bool
	// env is "auto", "embedded" or "netns": where the black-hole rows run.
	env    string
	logger *slog.Logger
}

// useNetns reports whether the black-hole rows run in network namespaces
// with Kamailio.
func (o *options) useNetns() bool {
	switch o.env {
	case "netns":
		return true
	case "embedded":
		return false
	}
	return needKamailio(true) == nil
}

// bound is the detection bound of a silent path: a probe interval plus its
// timeout.
func (o *options) bound() time.Duration { return o.keepAlive + o.timeout }

// hole is how long a silent path stays silent: past the bound.
func (o *options) hole() time.Duration { return o.bound() + 2*time.Second }

func main() {
	var o options
	flag.IntVar(&o.trunks, "trunks", 20, "trunks per row (one sip.Fleet)")
	flag.IntVar(&o.links, "links", 5, "conn.Links per row")
	flag.DurationVar(&o.keepAlive, "keepalive", time.Second, "sip KeepAlive and conn ProbeInterval")
	flag.DurationVar(&o.timeout, "timeout", 2*time.Second, "sip KeepAliveTimeout and conn ProbeTimeout")
	flag.DurationVar(&o.capAfter, "cap", 30*time.Second, "give up on a row's recovery this long after the restore")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "watch the restored path this long for false deaths")
	flag.DurationVar(&o.lossFor, "loss-for", 60*time.Second, "how long the loss row drops 10 % of the packets")
	flag.BoolVar(&o.liftAtStop, "lift-at-stop", false, "rows with a registrar capacity: lift it before stopping the fleet (isolates orphans left by unregistrations refused 503)")
	flag.StringVar(&o.env, "env", "auto", "black-hole rows: netns (root, Kamailio: a real nft black hole), embedded (freeze proxy, embedded registrar) or auto (netns when it can)")
	only := flag.String("fault", "", "run only these rows (comma-separated names; see -list)")
	list := flag.Bool("list", false, "list the rows and exit")
	asJSON := flag.Bool("json", false, "one JSON object per row and line")
	verbose := flag.Bool("v", false, "log relink's state changes to stderr")
	flag.Parse()
	if *list {
		for _, r := range rows {
			fmt.Printf("%-22s %s\n", r.name, r.about)
		}
		return
	}
	o.logger = slog.New(slog.DiscardHandler)
	// sipgo logs every failed read to the default logger: quiet unless -v.
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4})))
	if *verbose {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		o.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	selected, err := pick(*only)
	if err != nil || o.trunks < 1 || o.links < 0 {
		fmt.Fprintln(os.Stderr, "faults: bad flags:", err)
		os.Exit(2)
	}
	failed := false
	for _, r := range selected {
		res := runRow(context.Background(), &o, r)
		if res.Setup != "" {
			fmt.Fprintln(os.Stderr, "faults:", r.name, "setup:", res.Setup)
		}
		if !res.Pass && res.Skipped == "" {
			failed = true
		}
		print(os.Stdout, res, *asJSON)
	}
	if failed {
		os.Exit(1)
	}
}

// pick returns the rows named in a comma-separated list, in the matrix's
// order; an empty list means all.
func pick(names string) ([]row, error) {
	if names == "" {
		return rows, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	var out []row
	for _, r := range rows {
		if want[r.name] {
			out = append(out, r)
			delete(want, r.name)
		}
	}
	for n := range want {
		return nil, fmt.Errorf("unknown fault %q (see -list)", n)
	}
	return out, nil
}

// print writes one row as JSON or as a line of text.
func print(w io.Writer, r Result, asJSON bool) {
	if asJSON {
		b, _ := json.Marshal(r)
		fmt.Fprintln(w, string(b))
		return
	}
	if r.Skipped != "" {
		fmt.Fprintf(w, "%-22s skipped: %s\n", r.Fault, r.Skipped)
		return
	}
	fmt.Fprintf(w, "%-22s %s recovered %d/%d in %.2f s, detect p99 %s (bound %s), 503s %d, stop %s (503s %d), orphans %d, stale %d, false deaths %d, lost replies %d, stuck %d, pass %v %s\n",
		r.Fault, r.Env, r.Recovered, r.Trunks+r.Links, r.RecoverS, fmtOpt(r.DetectP99S), fmtOpt(r.BoundS),
		r.Rejected503, fmtOpt(r.StopS), r.Stop503, r.OrphanBindings, r.StaleRegistered, r.FalseDeaths, r.LostReplies, r.Stuck, r.Pass,
		strings.Join(r.Problems, "; "))
}

func fmtOpt(f *float64) string {
	if f == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f s", *f)
}
