// Command scale measures how much one process holds: a sip.Fleet of many
// trunks at steady state, and many wrapped, probed TCP connections.
//
//	go run ./internal/bench/scale -json
//	go run ./internal/bench/scale -trunks 500 -conns 2000 -conn-window 25s
//	go run ./internal/bench/scale -conns 0 -gate learn -pprof /tmp/scale
//
// The trunks row runs one Fleet of -trunks trunks against the embedded
// registrar (sip/siptest) told its capacity (-capacity REGISTER/s, 503 +
// Retry-After beyond), over TCP; the Fleet's gate is told that rate (-gate
// told) or learns it (-gate learn). It reports the time to register all;
// then, all registered, an idle window (no refresh is due: CRLF keepalives
// at the default 10 s only) and a refresh window (every trunk refreshes
// once, at -expires, 120 s by default); heap and goroutines per trunk are
// taken after a GC at the end of the idle window (HeapInuse + StackInuse
// above the process's own before the UA was made). CPU (getrusage, user +
// system) per trunk-hour at the defaults (Expires 3600 s, KeepAlive 10 s) is
// the idle window's rate plus 1.25 refreshes an hour (a refresh at 75-85 %
// of the grant) at the refresh window's cost per refresh (its CPU less the
// idle rate over its length, ÷ the REGISTER transactions in it).
//
// The conns row dials -conns connections to echo servers on loopback ports
// (-ports per server; each port gives the 4-tuple space of one ephemeral
// port range), each with a reader goroutine as an application has: once as
// plain TCP connections with the same kernel options, once wrapped by
// conn.Dialer with the CRLF probe at the default interval (10 s, or
// -probe-interval). Relink's cost per connection is the difference of the
// two runs' heap (HeapInuse + StackInuse after a GC), and its probing CPU
// the difference of their CPU over -conn-window (at least two probe
// intervals), as a percentage of one core. A third run (-floor, on by
// default) writes the probe's 4 bytes on plain connections at the same rate
// from one goroutine per client, paced every 10 ms: the CPU that the write
// and the reply's read cost without relink, which no prober can go below
// (on loopback the write also pays for delivering the segment to the echo
// server's socket). With -netdev-backlog (root) the host's input backlog,
// which every loopback segment goes through, is raised for the row: at its
// usual 1000 per CPU, the kernel keepalive of 100,000 connections dialed
// within seconds fires in bursts of thousands of segments (the kernel
// batches timers), the backlog drops them, and TCP_USER_TIMEOUT aborts
// connections whose keepalives went unanswered — a loopback artifact (on a
// NIC, received segments are polled, not queued there): 16,000 connections
// in one client lost 57,000 segments and 125 plain connections at 1000, and
// none with the backlog at 100,000. When the file limit (which only
// CAP_SYS_RESOURCE raises above the hard limit) is below -conns, the
// connections are shared by -procs client processes, each with an echo
// server of its own, run at once; their heaps, goroutines and CPU add up.
// The row counts the connections that died in each run by cause, and the
// host's loopback backlog drops beside them: with conn's default kernel
// keepalive (5 s idle), 100,000 connections on a loaded host lose thousands
// of keepalive segments at a time and the kernel aborts them (plain or
// wrapped alike); -conn-keepalive -1s turns the kernel keepalive off in both
// runs to measure the probe alone.
//
// Every server (registrar, echo) and every measured client runs in a
// process of its own (this program, re-executed with -role), so that each
// client's heap, goroutines and CPU are its own. The file limit is raised as
// far as the process may (as root, the hard limit too).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"
)

// childEnv marks a process started by this program as one of its roles
// (the test binary checks it to run main).
const childEnv = "RELINK_SCALE_CHILD"

// options are the command's flags.
type options struct {
	role string // "" (the parent), registrar, echo, trunks or conns

	trunks    int
	capacity  float64
	gate      string // told or learn
	expires   time.Duration
	keepAlive time.Duration
	timeout   time.Duration
	registrar string // trunks role: the registrar's URI

	conns         int
	ports         int
	procs         int
	id            string // conns role: its number among the clients, for profile names
	connWindow    time.Duration
	probeInterval time.Duration
	connKeep      time.Duration // kernel keepalive idle of the connections; 0 default, negative off
	mode          string        // conns role: plain, wrapped or writes
	floor         bool          // conns row: also run the writes mode
	backlog       int           // conns row: raise net.core.netdev_max_backlog to this (root)
	addrs         string        // conns role: the echo server's addresses, comma-separated

	pprof  string
	asJSON bool
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.StringVar(&o.role, "role", "", "internal: run as registrar, echo, trunks or conns (a child process)")
	fs.IntVar(&o.trunks, "trunks", 10000, "trunks in the Fleet (0: no trunks row)")
	fs.Float64Var(&o.capacity, "capacity", 500, "REGISTERs per second the registrar serves (503 + Retry-After beyond)")
	fs.StringVar(&o.gate, "gate", "told", "the Fleet's gate: told (Rate = -capacity) or learn (adaptive)")
	fs.DurationVar(&o.expires, "expires", 120*time.Second, "the trunks' Expires during the measurement (scaled to 3600 s in the result)")
	fs.DurationVar(&o.keepAlive, "keepalive", 0, "the trunks' KeepAlive (0: the default, 10 s)")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up on a row after this long")
	fs.StringVar(&o.registrar, "registrar", "", "internal: the registrar's URI (trunks role)")
	fs.IntVar(&o.conns, "conns", 100000, "probed connections (0: no conns row)")
	fs.IntVar(&o.ports, "ports", 2, "ports per echo server (each gives the 4-tuples of one ephemeral port range)")
	fs.IntVar(&o.procs, "procs", 0, "client processes (each with its echo server) sharing -conns (0: as the file limit requires)")
	fs.StringVar(&o.id, "id", "", "internal: the client's number (conns role)")
	fs.DurationVar(&o.connWindow, "conn-window", 30*time.Second, "CPU window of the conns row (at least two probe intervals)")
	fs.DurationVar(&o.probeInterval, "probe-interval", 0, "ProbeInterval of the wrapped connections (0: the default, 10 s)")
	fs.DurationVar(&o.connKeep, "conn-keepalive", 0, "kernel keepalive idle of both runs' connections (0: conn's default, 5 s; negative: off)")
	fs.StringVar(&o.mode, "mode", "", "internal: plain, wrapped or writes (conns role)")
	fs.IntVar(&o.backlog, "netdev-backlog", 0, "conns row: raise net.core.netdev_max_backlog to this for the row, then restore it (root; 0: leave it)")
	fs.BoolVar(&o.floor, "floor", true, "conns row: also measure plain connections written to at the probes' rate (the write's floor)")
	fs.StringVar(&o.addrs, "addrs", "", "internal: the echo server's addresses (conns role)")
	fs.StringVar(&o.pprof, "pprof", "", "write heap, goroutine and CPU profiles of the measured clients into this directory")
	fs.BoolVar(&o.asJSON, "json", false, "print one JSON object per row")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case o.trunks < 0 || o.conns < 0 || o.procs < 0 || o.ports <= 0:
		return nil, errors.New("-trunks, -conns and -procs must not be negative, -ports must be positive")
	case o.gate != "told" && o.gate != "learn":
		return nil, fmt.Errorf("-gate %q: want told or learn", o.gate)
	case !(o.capacity > 0) || o.expires <= 0 || o.connWindow <= 0 || o.timeout <= 0:
		return nil, errors.New("-capacity, -expires, -conn-window and -timeout must be positive")
	}
	return o, nil
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(2)
	}
	switch o.role {
	case "registrar":
		err = serveRegistrar(o, os.Stdin, os.Stdout)
	case "echo":
		err = serveEcho(o, os.Stdin, os.Stdout)
	case "trunks":
		err = runTrunks(o, os.Stdout)
	case "conns":
		err = runConns(o, os.Stdout)
	case "":
		err = run(o, func(v any) { emit(o, v, os.Stdout) })
	default:
		err = fmt.Errorf("unknown -role %q", o.role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// run measures the rows asked for, calling out with each row's result.
func run(o *options, out func(any)) error {
	if o.trunks > 0 {
		r, err := trunksRow(o)
		if err != nil {
			return fmt.Errorf("trunks row: %w", err)
		}
		out(r)
	}
	if o.conns > 0 {
		r, err := connsRow(o)
		if err != nil {
			return fmt.Errorf("conns row: %w", err)
		}
		out(r)
	}
	return nil
}

// emit prints a row: JSON, or its fields one per line.
func emit(o *options, v any, w io.Writer) {
	b, _ := json.Marshal(v)
	if o.asJSON {
		fmt.Fprintln(w, string(b))
		return
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	fmt.Fprintf(w, "%s row:\n", m["row"])
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if k != "row" {
			fmt.Fprintf(w, "  %-32s %v\n", k, m[k])
		}
	}
}
