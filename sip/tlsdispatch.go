package sip

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// tlsDispatch is the TLS client configuration relink gives sipgo (one per
// UA, as sipgo takes): it verifies each server and picks each client
// certificate with the configuration of the trunk that dials, so that
// trunks on one UA can have their own roots and certificates (a client
// certificate per carrier).
//
// sipgo v1.7.3 dials TLS and WSS with one *tls.Config whose ServerName it
// sets to the registrar's host. The dispatcher keeps, per host, the
// TrunkConfig.TLSConfig of the trunks registering there (one per host:
// sipgo pools one connection per address, which carries one client
// certificate), and verifies the server's chain in VerifyConnection with
// that configuration's RootCAs and ServerName, exactly as crypto/tls does
// (it sets InsecureSkipVerify only to move that verification into
// VerifyConnection; it is never skipped). The client certificate comes
// from the configuration in the handshake's context (TLS: relink dials
// with it); sipgo's WSS handshake has no context, so a WSS trunk's client
// certificate is chosen by the CAs the server asks for: the one trunk
// configuration with a certificate of such a CA, else the UA's
// (UAConfig.TLSConfig). Its verification is its own either way.
//
// A handshake with an IP address sends no SNI, so VerifyConnection cannot
// read the address: relink records each TLS and WSS dial to an IP address
// (TLS: in the dialer; WSS: before a trunk's connect) and accepts a
// certificate only if it is valid for one of those addresses under that
// dial's configuration. The application's own WSS requests to an IP
// address (dialled by sipgo without relink) therefore fail verification:
// give such peers a host name.
type tlsDispatch struct {
	base *tls.Config // UAConfig.TLSConfig, or an empty config

	mu     sync.RWMutex
	byHost map[string]*tls.Config
	// dialling holds the IP addresses TLS and WSS connections are being
	// dialled to: a handshake with an IP address sends no SNI, so
	// VerifyConnection learns the address only from here (see verify).
	dialling map[netip.Addr]dialEntry
}

// dialEntry is a connection being dialled to an IP address, with the
// configuration that governs it, until the handshake has had time to end.
type dialEntry struct {
	cfg   *tls.Config
	until time.Time
}

// dialGrace is how long a dial to an IP address is remembered for its
// handshake.
const dialGrace = 30 * time.Second

func newTLSDispatch(base *tls.Config) *tlsDispatch {
	if base == nil {
		base = &tls.Config{}
	}
	return &tlsDispatch{base: base, byHost: make(map[string]*tls.Config),
		dialling: make(map[netip.Addr]dialEntry)}
}

// dialIP records a TLS or WSS dial to ip, governed by cfg (nil: the
// configuration of ip's host, else the UA's).
func (d *tlsDispatch) dialIP(ip netip.Addr, cfg *tls.Config) {
	if cfg == nil {
		cfg = d.forHost(ip.String())
	}
	now := time.Now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for a, e := range d.dialling {
		if now.After(e.until) {
			delete(d.dialling, a)
		}
	}
	d.dialling[ip.Unmap()] = dialEntry{cfg: cfg, until: now.Add(dialGrace)}
}

// config is the configuration for sipgo (WithUserAgenTLSConfig).
func (d *tlsDispatch) config() *tls.Config {
	c := d.base.Clone()
	c.InsecureSkipVerify = true // verified in VerifyConnection, never skipped
	c.VerifyPeerCertificate = nil
	c.VerifyConnection = d.verify
	c.GetClientCertificate = d.clientCert
	c.Certificates = nil
	return c
}

// use records cfg as the TLS configuration of the trunks dialling host.
// A different configuration for a host that has one is a configuration
// error (one connection per address carries one client certificate).
func (d *tlsDispatch) use(host string, cfg *tls.Config) error {
	host = strings.ToLower(host)
	d.mu.Lock()
	defer d.mu.Unlock()
	if old, ok := d.byHost[host]; ok && old != cfg {
		return fmt.Errorf("%w: %s: two trunks with different TLSConfigs share the registrar (sipgo keeps one connection per address); give them the same *tls.Config", ErrTLSConfig, host)
	}
	d.byHost[host] = cfg
	return nil
}

// forHost returns the configuration that governs a connection to host.
func (d *tlsDispatch) forHost(host string) *tls.Config {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if c, ok := d.byHost[strings.ToLower(host)]; ok {
		return c
	}
	return d.base
}

type tlsCtxKey struct{}

func withTLSConfig(ctx context.Context, cfg *tls.Config) context.Context {
	return context.WithValue(ctx, tlsCtxKey{}, cfg)
}

// verify is VerifyConnection: the checks crypto/tls makes without
// InsecureSkipVerify, with the host's configuration, then its own
// VerifyPeerCertificate and VerifyConnection. A handshake with an IP
// address carries no server name: the certificate must then be valid for
// an address a TLS or WSS connection is being dialled to (each checked
// with its own configuration), as crypto/tls checks the dialled address.
func (d *tlsDispatch) verify(cs tls.ConnectionState) error {
	cfg, name := d.forHost(cs.ServerName), cs.ServerName
	if name == "" {
		cfg, name = d.byAddress(cs)
	}
	if !cfg.InsecureSkipVerify { // the user's own choice; relink never sets it
		chains, err := verifyChain(cfg, name, cs)
		if err != nil {
			return err
		}
		if cfg.VerifyPeerCertificate != nil {
			raw := make([][]byte, len(cs.PeerCertificates))
			for i, c := range cs.PeerCertificates {
				raw[i] = c.Raw
			}
			if err := cfg.VerifyPeerCertificate(raw, chains); err != nil {
				return err
			}
		}
	}
	if cfg.VerifyConnection != nil {
		return cfg.VerifyConnection(cs)
	}
	return nil
}

// byAddress returns the configuration and address of the dial, among
// those in progress to IP addresses, that the server's certificate names.
// None: the UA's configuration and no name, which fails verification
// ("certificate is not valid for any names"): never skipped.
func (d *tlsDispatch) byAddress(cs tls.ConnectionState) (*tls.Config, string) {
	if len(cs.PeerCertificates) == 0 {
		return d.base, ""
	}
	now := time.Now()
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, ip := range cs.PeerCertificates[0].IPAddresses {
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if e, ok := d.dialling[a.Unmap()]; ok && now.Before(e.until) {
			return e.cfg, a.Unmap().String()
		}
	}
	return d.base, ""
}

func verifyChain(cfg *tls.Config, name string, cs tls.ConnectionState) ([][]*x509.Certificate, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("tls: server sent no certificate")
	}
	if cfg.ServerName != "" {
		name = cfg.ServerName
	}
	if name == "" {
		return nil, &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates,
			Err: errors.New("x509: certificate is not valid for any address being dialled (a TLS connection to an IP address that relink did not dial)")}
	}
	now := time.Now()
	if cfg.Time != nil {
		now = cfg.Time()
	}
	opts := x509.VerifyOptions{Roots: cfg.RootCAs, CurrentTime: now, DNSName: name,
		Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := cs.PeerCertificates[0].Verify(opts)
	if err != nil {
		return nil, &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return chains, nil
}

// clientCert is GetClientCertificate: the certificate of the dialling
// trunk's configuration (from the handshake's context: TLS). A handshake
// without one (sipgo's WSS) gets the certificate of the one trunk
// configuration whose certificate is issued by a CA the server named in its
// request, if exactly one is; else the UA's.
func (d *tlsDispatch) clientCert(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cfg := d.base
	if c, ok := cri.Context().Value(tlsCtxKey{}).(*tls.Config); ok && c != nil {
		cfg = c
	} else if c := d.byRequest(cri); c != nil {
		cfg = c
	}
	return certOf(cfg, cri)
}

// byRequest returns the trunk configuration whose client certificate the
// server's request names (by its acceptable CAs), if exactly one does.
func (d *tlsDispatch) byRequest(cri *tls.CertificateRequestInfo) *tls.Config {
	if len(cri.AcceptableCAs) == 0 {
		return nil // any CA: nothing to choose by
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	var found *tls.Config
	for _, c := range d.byHost {
		if c == found || c.GetClientCertificate != nil {
			continue
		}
		for i := range c.Certificates {
			if cri.SupportsCertificate(&c.Certificates[i]) == nil {
				if found != nil {
					return nil // two carriers' CAs: ambiguous
				}
				found = c
				break
			}
		}
	}
	return found
}

func certOf(cfg *tls.Config, cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if cfg.GetClientCertificate != nil {
		return cfg.GetClientCertificate(cri)
	}
	for i := range cfg.Certificates {
		if cri.SupportsCertificate(&cfg.Certificates[i]) == nil {
			return &cfg.Certificates[i], nil
		}
	}
	if len(cfg.Certificates) > 0 {
		return &cfg.Certificates[0], nil
	}
	return &tls.Certificate{}, nil // none: the server decides
}
