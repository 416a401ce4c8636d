package main

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"time"
)

// The demonstration's protocol, one line each way, over TLS:
//
//	client: LOGIN <user> <password>
//	server: WELCOME <user>     logged in: every line is echoed from now on
//	server: BUSY <seconds>     not now, try again after that many seconds
//	server: BUSY               not now (no hint)
//	server: DENIED             wrong password: trying again cannot help
//
// Blank lines are answers to the client's probe (CRLF: "\r\n\r\n" echoed).

// password is the one the built-in server accepts.
const password = "secret"

// server is the built-in TLS login server. It can refuse logins (busy),
// hang (its open sessions stay connected but nothing is answered any more)
// and restart (every connection closed, the port refused for a while).
type server struct {
	cert *tls.Certificate
	addr string

	mu        sync.Mutex
	ln        net.Listener // nil while restarting
	busyUntil time.Time
	conns     map[net.Conn]bool // open connections: true once hung
	stopped   bool
	wg        sync.WaitGroup
}

// newServer generates a self-signed certificate for 127.0.0.1 and
// localhost and listens on loopback, refusing logins for busyFor.
func newServer(busyFor time.Duration) (*server, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	s := &server{cert: cert, conns: make(map[net.Conn]bool), busyUntil: time.Now().Add(busyFor)}
	if err := s.listen("127.0.0.1:0"); err != nil {
		return nil, err
	}
	return s, nil
}

// selfSigned makes the server's certificate; clients trust it alone.
func selfSigned() (*tls.Certificate, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := x509.Certificate{
		Subject:               pkix.Name{CommonName: "relink example"},
		SerialNumber:          big.NewInt(now.UnixNano()),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // self-signed: it is its own root
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// roots is the pool a client needs to trust the server.
func (s *server) roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.cert.Leaf)
	return p
}

func (s *server) listen(addr string) error {
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{*s.cert}, MinVersion: tls.VersionTLS13})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		ln.Close()
		return net.ErrClosed
	}
	s.ln, s.addr = ln, ln.Addr().String()
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

func (s *server) accept(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.ln != ln {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = false
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve answers the login, then echoes every line until the connection
// ends or the server hangs.
func (s *server) serve(c net.Conn) {
	defer s.wg.Done()
	defer s.drop(c)
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	for err == nil && strings.TrimSpace(line) == "" {
		line, err = r.ReadString('\n') // a probe before the login
	}
	if err != nil {
		return
	}
	reply, ok := s.login(strings.Fields(line))
	if _, err := io.WriteString(c, reply+"\n"); err != nil || !ok {
		return
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if s.hung(c) {
			continue // read, never answered
		}
		if _, err := io.WriteString(c, line); err != nil {
			return
		}
	}
}

// login answers a LOGIN line; ok says that the session goes on.
func (s *server) login(f []string) (reply string, ok bool) {
	s.mu.Lock()
	busy := time.Until(s.busyUntil)
	s.mu.Unlock()
	switch {
	case len(f) != 3 || f[0] != "LOGIN":
		return "ERROR expected LOGIN <user> <password>", false
	case f[2] != password:
		logf("server: DENIED %s (wrong password)", f[1])
		return "DENIED", false
	case busy > 0:
		secs := int(busy/time.Second) + 1
		logf("server: BUSY %d to %s", secs, f[1])
		return fmt.Sprintf("BUSY %d", secs), false
	}
	logf("server: WELCOME %s", f[1])
	return "WELCOME " + f[1], true
}

func (s *server) hung(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[c]
}

func (s *server) drop(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// hang makes every open session stop answering; new ones are served.
func (s *server) hang() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		s.conns[c] = true
	}
}

// restart closes the listener and every connection, keeps the port closed
// for down, then listens again on the same address, refusing logins for
// busyFor.
func (s *server) restart(down, busyFor time.Duration, sleep func(time.Duration) bool) error {
	s.closeAll(false)
	if !sleep(down) {
		return nil
	}
	s.mu.Lock()
	s.busyUntil = time.Now().Add(busyFor)
	s.mu.Unlock()
	if err := s.listen(s.addr); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

// closeAll closes the listener and the connections; final keeps the
// server closed for good and waits for its goroutines.
func (s *server) closeAll(final bool) {
	s.mu.Lock()
	s.stopped = s.stopped || final
	if s.ln != nil {
		s.ln.Close()
		s.ln = nil
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	if final {
		s.wg.Wait()
	}
}
