// Command register keeps one SIP trunk registered with a registrar given by
// flags, printing each state change, until Ctrl-C; then it unregisters.
//
//	go run ./examples/register -registrar 'sip:pbx.example.com;transport=tcp' \
//		-user alice -pass secret
//
// The trunk re-registers by itself when the TCP flow goes silent (a CRLF ping
// every -keepalive, dead 5 s after an unanswered one) or a refresh fails.
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

	"github.com/relinkgo/relink/sip"
)

func main() {
	registrar := flag.String("registrar", "", `registrar URI, e.g. "sip:pbx.example.com:5060;transport=tcp" (required)`)
	user := flag.String("user", "", "digest username (default: the AOR's user)")
	pass := flag.String("pass", "", "digest password")
	aor := flag.String("aor", "", `address-of-record (default "sip:USER@REGISTRAR-HOST")`)
	contact := flag.String("contact", "", "Contact URI (default: built from the connection's local address)")
	expires := flag.Duration("expires", sip.DefaultExpires, "registration interval to ask for")
	keepalive := flag.Duration("keepalive", sip.DefaultKeepAlive, "CRLF ping after this much silence on the flow (negative disables)")
	verbose := flag.Bool("v", false, "log requests and responses (never credentials) to stderr")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Stdout, *registrar, *user, *pass, *aor, *contact, *expires, *keepalive, *verbose)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "register:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, registrar, user, pass, aor, contact string, expires, keepalive time.Duration, verbose bool) error {
	if registrar == "" {
		flag.Usage()
		return errors.New("-registrar is required")
	}
	if aor == "" {
		if user == "" {
			return errors.New("-aor or -user is required")
		}
		var u sipmsg.Uri
		if err := sipmsg.ParseUri(registrar, &u); err != nil {
			return fmt.Errorf("registrar %q: %w", registrar, err)
		}
		aor = "sip:" + user + "@" + u.Host
	}
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(log)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(log)},
	})
	if err != nil {
		return err
	}
	defer ua.Close()

	trunk, err := sip.NewTrunk(ua, sip.TrunkConfig{
		Registrars: strings.Split(registrar, ","),
		AOR:        aor,
		Contact:    contact,
		Username:   user,
		Password:   pass,
		Expires:    expires,
		KeepAlive:  keepalive,
		Logger:     log,
		OnStateChange: func(sc sip.TrunkStateChange) {
			line := fmt.Sprintf("%s  %-12s → %-12s %s", sc.At.Format("15:04:05.000"), sc.From, sc.To, sc.Destination)
			if sc.Expires > 0 {
				line += fmt.Sprintf("  expires %v", sc.Expires)
			}
			if sc.Err != nil && !errors.Is(sc.Err, context.Canceled) {
				line += "  (" + sc.Err.Error() + ")"
			}
			fmt.Fprintln(out, line)
		},
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "registering %s with %s; Ctrl-C to unregister and quit\n", aor, registrar)
	err = trunk.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
