// Command testkam runs the tests' Kamailio registrar (internal/kamailio)
// with TLS, WS and WSS listeners until interrupted, for trying the
// examples by hand:
//
//	go run ./internal/kamailio/testkam -ca /tmp/kam-ca.pem
//	# prints the TCP, TLS, WS and WSS URIs; any user, password "secret"
//	go run ./examples/register -registrar 'sips:127.0.0.1:PORT' -ca /tmp/kam-ca.pem -user alice -pass secret
//
// The CA that signed Kamailio's certificate is written to -ca (PEM), for
// the client's roots. With -client-cert, Kamailio requires a client
// certificate of that CA, and one is written to -client-cert (certificate
// and key, PEM).
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/relinkgo/relink/internal/kamailio"
)

func main() {
	var (
		addr    = flag.String("addr", "127.0.0.1:0", "UDP and TCP listen address (TLS, WS and WSS get free ports on the same host)")
		caPath  = flag.String("ca", "kamailio-ca.pem", "where to write the CA certificate (PEM)")
		client  = flag.String("client-cert", "", "require client certificates; write one (certificate and key, PEM) to this file")
		noCRLF  = flag.Bool("no-crlf-answer", false, "do not answer CRLF pings on TCP and TLS")
		pass    = flag.String("pass", "secret", "password accepted for every user")
		verbose = flag.Int("debug", 0, "Kamailio's log level (-1 errors ... 3 debug)")
	)
	flag.Parse()
	if err := run(*addr, *caPath, *client, *pass, *noCRLF, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "testkam:", err)
		os.Exit(1)
	}
}

func run(addr, caPath, client, pass string, noCRLF bool, debug int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	k, err := kamailio.Launch(ctx, kamailio.Options{Addr: addr, Password: pass, TLS: true, WebSocket: true,
		RequireClientCert: client != "", NoCRLFAnswer: noCRLF, Debug: debug})
	if err != nil {
		return err
	}
	defer func() { _ = k.Stop() }()
	if err := os.WriteFile(caPath, k.CA().PEM(), 0o644); err != nil {
		return err
	}
	if client != "" {
		if err := writeClientCert(k.CA(), client); err != nil {
			return err
		}
	}
	fmt.Printf("kamailio running (any user, password %q); CA written to %s\n", pass, caPath)
	fmt.Printf("  tcp: %s\n  tls: %s\n  ws:  %s\n  wss: %s\n", k.URI(), k.TLSURI(), k.WSURI(), k.WSSURI())
	fmt.Println("Ctrl-C to stop")
	select {
	case <-ctx.Done():
	case <-k.Done():
		return fmt.Errorf("kamailio exited: %s", k.Log())
	}
	return nil
}

func writeClientCert(ca *kamailio.CA, path string) error {
	c, err := ca.Issue("testkam client")
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})...)
	return os.WriteFile(path, out, 0o600)
}
