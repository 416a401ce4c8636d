// Command register keeps one SIP trunk registered with a registrar given by
// flags, printing each state change, until Ctrl-C; then it unregisters.
//
//	go run ./examples/register -registrar 'sip:pbx.example.com;transport=tcp' \
//		-user alice -pass secret
//
// The trunk re-registers by itself when the TCP flow goes silent (a CRLF ping
// every -keepalive, dead 5 s after an unanswered one) or a refresh fails.
//
// The trunk runs on a sip.Fleet, whose gate admits its REGISTERs towards
// the registrar. With -redis ADDR that gate joins the fleet-wide gate kept
// on that Redis (backoff/fleetgate): every process started with the same
// -redis and registrar admits at one pace, one 503 Retry-After pauses them
// all, one scout probes a dead registrar for all, and what one learned of
// the registrar's capacity is every process's.
//
//	go run ./examples/register -registrar 'sip:pbx.example.com;transport=tcp' \
//		-user alice -pass secret -redis 127.0.0.1:6379
//
// ADDR is host:port or a redis:// (rediss://) URL. Redis is part of the
// outage too: each call to it is bounded at 50 ms, and while it cannot be
// reached the process admits on its own at its share of the last known
// fleet pace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
	"github.com/relinkgo/relink/sip"
)

// config is the command's flags.
type config struct {
	registrar, user, pass, aor, contact string
	redis                               string
	expires, keepalive                  time.Duration
	verbose                             bool
}

func main() {
	var c config
	flag.StringVar(&c.registrar, "registrar", "", `registrar URI, e.g. "sip:pbx.example.com:5060;transport=tcp" (required)`)
	flag.StringVar(&c.user, "user", "", "digest username (default: the AOR's user)")
	flag.StringVar(&c.pass, "pass", "", "digest password")
	flag.StringVar(&c.aor, "aor", "", `address-of-record (default "sip:USER@REGISTRAR-HOST")`)
	flag.StringVar(&c.contact, "contact", "", "Contact URI (default: built from the connection's local address)")
	flag.DurationVar(&c.expires, "expires", sip.DefaultExpires, "registration interval to ask for")
	flag.DurationVar(&c.keepalive, "keepalive", sip.DefaultKeepAlive, "CRLF ping after this much silence on the flow (negative disables)")
	flag.StringVar(&c.redis, "redis", "", `share the registrar's gate with every process using this Redis: host:port or a redis:// URL (default: a gate of this process alone)`)
	flag.BoolVar(&c.verbose, "v", false, "log requests and responses (never credentials) to stderr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Stdout, c)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, c config) error {
	if err := c.complete(); err != nil {
		return err
	}
	level := slog.LevelWarn
	if c.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	gate, leave, err := gateConfig(c.redis)
	if err != nil {
		return err
	}
	defer leave()
	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(log)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(log)},
	})
	if err != nil {
		return err
	}
	defer ua.Close()

	fleet := sip.NewFleet(ua, sip.FleetConfig{Gate: gate, Logger: log})
	_, err = fleet.Add(sip.TrunkConfig{
		Registrars:    strings.Split(c.registrar, ","),
		AOR:           c.aor,
		Contact:       c.contact,
		Username:      c.user,
		Password:      c.pass,
		Expires:       c.expires,
		KeepAlive:     c.keepalive,
		OnStateChange: func(sc sip.TrunkStateChange) { printChange(out, sc) },
	})
	if err != nil {
		return err
	}
	// The fleet's gates leave the fleet-wide gate (if any) when we are done:
	// this process's share is released at once.
	shared := ""
	if c.redis != "" {
		shared = " (gate shared on Redis " + c.redis + ")"
	}
	fmt.Fprintf(out, "registering %s with %s%s; Ctrl-C to unregister and quit\n", c.aor, c.registrar, shared)
	err = fleet.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// complete checks the flags and fills in the AOR.
func (c *config) complete() error {
	if c.registrar == "" {
		flag.Usage()
		return errors.New("-registrar is required")
	}
	if c.aor != "" {
		return nil
	}
	if c.user == "" {
		return errors.New("-aor or -user is required")
	}
	var u sipmsg.Uri
	if err := sipmsg.ParseUri(strings.Split(c.registrar, ",")[0], &u); err != nil {
		return fmt.Errorf("registrar %q: %w", c.registrar, err)
	}
	c.aor = "sip:" + c.user + "@" + u.Host
	return nil
}

// gateConfig is the fleet's gate template: a gate of this process alone, or,
// with a Redis address, one joined to the fleet-wide gate on it. leave
// closes the Redis client.
func gateConfig(addr string) (backoff.GateConfig, func(), error) {
	if addr == "" {
		return backoff.GateConfig{}, func() {}, nil
	}
	opts := &redis.Options{Addr: addr}
	if strings.Contains(addr, "://") {
		var err error
		if opts, err = redis.ParseURL(addr); err != nil {
			return backoff.GateConfig{}, nil, fmt.Errorf("-redis %q: %w", addr, err)
		}
	}
	// Every call ends at fleetgate's bound (50 ms); a Redis that is down
	// is noticed at once.
	opts.ContextTimeoutEnabled = true
	opts.DialTimeout = 50 * time.Millisecond
	opts.MaxRetries = -1
	rdb := redis.NewClient(opts)
	f, err := fleetgate.New(rdb, fleetgate.Config{})
	if err != nil {
		rdb.Close()
		return backoff.GateConfig{}, nil, err
	}
	return backoff.GateConfig{Fleet: f}, func() { rdb.Close() }, nil
}

func printChange(out io.Writer, sc sip.TrunkStateChange) {
	line := fmt.Sprintf("%s  %-12s → %-12s %s", sc.At.Format("15:04:05.000"), sc.From, sc.To, sc.Destination)
	if sc.Expires > 0 {
		line += fmt.Sprintf("  expires %v", sc.Expires)
	}
	if sc.Err != nil && !errors.Is(sc.Err, context.Canceled) {
		line += "  (" + sc.Err.Error() + ")"
	}
	fmt.Fprintln(out, line)
}
