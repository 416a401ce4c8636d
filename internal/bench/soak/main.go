// Command soak runs relink for a long time under a random fault every
// -fault-every and samples what the client process holds, to show that it
// stays flat (issue 14).
//
//	go run ./internal/bench/soak -duration 30m -json > soak.json
//	go run ./internal/bench/soak/plot -in soak.json -out soak.svg
//	go run ./internal/bench/soak -duration 2m -trunks 200 -links 100 -fault-every 10s -sample 10s
//
// The measured client is this program re-executed with -role client: one
// sip.Fleet of -trunks trunks (TCP, digest auth, Expires -expires) and
// -links conn.Links to an echo peer (half of them echo a numbered line
// every -echo-every, the other half once per connection and then stay idle,
// kept by their probe, an empty line the peer echoes). KeepAlive and the
// Links' ProbeInterval are -keepalive, KeepAliveTimeout and ProbeTimeout
// -timeout. The servers and the fault injection live in the parent, so the
// figures are the client's alone.
//
// Environment (field env): "netns+kamailio" (root, Kamailio, ip, nft and
// ss; the default when they are there, -env auto): Kamailio and the echo
// peer in the server namespace of an internal/netns pair, the client in the
// client namespace (ip netns exec). "embedded" (-env embedded, or auto
// without them): the embedded registrar of internal/registrar (the one
// behind sip/siptest) and the echo peer on loopback, each behind a freeze
// proxy (internal/faultproxy).
//
// Faults, drawn with a seeded random generator (-seed: a run repeats its
// sequence), one every -fault-every (a fault that overruns its slot, with
// its recovery and a due sample, delays the next, which then starts at
// once), each cleared after a bounded hold: blackhole for the detection
// bound + 2 s (netns: nft drops both ports' packets both ways; embedded:
// the proxies freeze), peer-rst (netns: ss -K aborts the server side's
// sockets, which sends the client a RST; embedded: the proxies reset),
// registrar-restart (Kamailio or the registrar stopped and started again
// 2 s later on its address: bindings, nonces and their secret lost),
// 503-storm (the SIP flow reset into a registrar serving trunks/4
// REGISTERs per second, 503 Retry-After 5 s beyond, for 10 s or half a
// shorter -fault-every), link-half-close (the echo peer sends a FIN on
// every connection and keeps reading), peer-hung for the bound + 2 s
// (Kamailio SIGSTOPped, the embedded registrar silent, the echo peer
// reading and discarding). After the clear, the parent waits until every
// unit the fault affects has noticed it and come back (a trunk Registered
// again, a Link Ready with an echo answered on a new connection) and every
// other unit is Registered or Ready, up to -recover-cap: that is the
// fault's recover_s (from the clear), or its stuck units.
//
// Output, one JSON object per line with -json: a "sample" at every -sample
// mark, a "fault" per fault, and a final "summary". A sample is taken in a
// quiet state: faults run one at a time and the parent takes a due sample
// only between them, after the fault in progress was cleared, every trunk
// and Link recovered, and -settle (35 s) passed for the baseline and end
// samples (a third of it for the others), so a sample may come up to a
// fault's length and its settle after its mark. The settle is there
// because, after a recovery, the client holds what its burst of REGISTERs
// allocated (sipgo requests, responses and client transactions, relink's
// REGISTER building, as heap profiles taken every 4 s across a fault show)
// for 20 to 30 s, then releases it at once: 0.5 to 1 MiB per 1,000 trunks,
// a few percent of the heap, which would otherwise decide the comparison.
//
// Heap is HeapInuse + StackInuse after a GC (runtime.GC,
// debug.FreeOSMemory); heap_alloc (HeapAlloc, the live objects) is
// reported beside it and not judged; fds counts /proc/self/fd. The
// baseline is the first sample at or after min(5 min, -duration/6); the
// end sample is due at -duration, and waits for the last fault (none
// starts later than -duration - -fault-every) to clear and recover and for
// -settle. The summary compares them (change in %; live_change_pct for the
// live heap), counts stuck units (not recovered from a fault by
// -recover-cap, or whose Run did not return at the stop), orphan bindings
// (held by the registrar after the fleet stopped), stale_registered
// (trunks Registered at the end without a binding), and false deaths
// (flow deaths and Links leaving Ready outside an affecting fault's
// window: from its cut to its clear + the detection bound + 2 s). pass is
// true when heap, goroutines and fds changed by at most 5 % and every
// count is 0. With -pprof DIR the client writes heap and goroutine
// profiles at the baseline and the end (base-heap.pb.gz,
// end-goroutine.txt, ...) for a diff:
//
//	go tool pprof -diff_base DIR/base-heap.pb.gz DIR/end-heap.pb.gz
//
// The exit status is 1 when the summary does not pass, 2 on a setup error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// options are the command's flags.
type options struct {
	role       string // "" (the parent) or client
	duration   time.Duration
	faultEvery time.Duration
	sample     time.Duration
	seed       uint64
	trunks     int
	links      int
	keepAlive  time.Duration // sip KeepAlive and conn ProbeInterval
	timeout    time.Duration // sip KeepAliveTimeout and conn ProbeTimeout
	expires    time.Duration
	echoEvery  time.Duration
	recoverCap time.Duration
	settle     time.Duration
	startCap   time.Duration
	env        string // auto, netns or embedded
	faults     string
	pprof      string
	asJSON     bool
	verbose    bool

	// client role: where the servers are.
	sipURI   string
	echoAddr string

	logger *slog.Logger
}

// bound is the detection bound of a silent path: a probe interval plus its
// timeout.
func (o *options) bound() time.Duration { return o.keepAlive + o.timeout }

// baseline is when the baseline sample is due: 5 min, or 1/6 of a shorter
// run.
func (o *options) baseline() time.Duration { return min(5*time.Minute, o.duration/6) }

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.StringVar(&o.role, "role", "", "internal: client runs the measured process")
	fs.DurationVar(&o.duration, "duration", 30*time.Minute, "length of the run")
	fs.DurationVar(&o.faultEvery, "fault-every", 30*time.Second, "a random fault starts this often")
	fs.DurationVar(&o.sample, "sample", time.Minute, "sample the client this often")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the fault sequence")
	fs.IntVar(&o.trunks, "trunks", 2000, "trunks in the sip.Fleet")
	fs.IntVar(&o.links, "links", 1000, "conn.Links")
	fs.DurationVar(&o.keepAlive, "keepalive", 5*time.Second, "sip KeepAlive and conn ProbeInterval")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Second, "sip KeepAliveTimeout and conn ProbeTimeout")
	fs.DurationVar(&o.expires, "expires", 120*time.Second, "the trunks' Expires (refreshed at 75-85 %)")
	fs.DurationVar(&o.echoEvery, "echo-every", 2*time.Second, "a busy Link echoes a line this often")
	fs.DurationVar(&o.recoverCap, "recover-cap", 60*time.Second, "a unit not recovered this long after a fault's clear is stuck")
	fs.DurationVar(&o.settle, "settle", 35*time.Second, "the baseline and end samples wait this long after a fault's recovery, the others a third of it (a recovery's REGISTERs stay on the heap for 20-30 s)")
	fs.DurationVar(&o.startCap, "start-cap", 2*time.Minute, "give up when the client is not registered and ready after this long")
	fs.StringVar(&o.env, "env", "auto", "netns (root: Kamailio in network namespaces, nft), embedded (loopback, freeze proxies) or auto (netns when it can)")
	fs.StringVar(&o.faults, "faults", "", "draw only from these faults (comma-separated; default all)")
	fs.StringVar(&o.pprof, "pprof", "", "the client writes heap and goroutine profiles at the baseline and the end into this directory")
	fs.BoolVar(&o.asJSON, "json", false, "one JSON object per line")
	fs.BoolVar(&o.verbose, "v", false, "log relink's warnings to stderr")
	fs.StringVar(&o.sipURI, "sip", "", "internal: the registrar's URI (client role)")
	fs.StringVar(&o.echoAddr, "echo", "", "internal: the echo peer's address (client role)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case o.trunks < 0 || o.links < 0 || o.trunks+o.links == 0:
		return nil, errors.New("-trunks and -links must not be negative, nor both zero")
	case o.duration <= 0 || o.faultEvery <= 0 || o.sample <= 0 || o.keepAlive <= 0 || o.timeout <= 0 ||
		o.expires <= 0 || o.echoEvery <= 0 || o.recoverCap <= 0 || o.startCap <= 0 || o.settle < 0:
		return nil, errors.New("durations must be positive")
	case o.echoEvery >= o.keepAlive:
		// A session that does not read for 2 × ProbeInterval is a
		// stalled reader by conn's rule, declared dead.
		return nil, errors.New("-echo-every must be below -keepalive")
	case o.env != "auto" && o.env != "netns" && o.env != "embedded":
		return nil, fmt.Errorf("-env %q: want auto, netns or embedded", o.env)
	}
	if _, err := pickFaults(o.faults); err != nil {
		return nil, err
	}
	o.logger = quietLogger(o.verbose)
	return o, nil
}

// clientArgs are the flags of the client process.
func (o *options) clientArgs(sipURI, echoAddr string) []string {
	return []string{"-role", "client", "-sip", sipURI, "-echo", echoAddr,
		"-trunks", strconv.Itoa(o.trunks), "-links", strconv.Itoa(o.links),
		"-keepalive", o.keepAlive.String(), "-timeout", o.timeout.String(), "-expires", o.expires.String(),
		"-echo-every", o.echoEvery.String(), "-start-cap", o.startCap.String(), "-pprof", o.pprof,
		"-v=" + strconv.FormatBool(o.verbose)}
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if o.role == "client" {
		// A ^C reaches the whole process group: the parent stops the
		// client (its stdin closes), so that it unregisters first.
		signal.Ignore(os.Interrupt)
		if err := runClient(o, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "soak client:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	sum, err := run(ctx, o, newPrinter(os.Stdout, o.asJSON))
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !sum.Pass {
		os.Exit(1)
	}
}
