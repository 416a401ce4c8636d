package sip

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
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
// certificate is the UA's (UAConfig.TLSConfig) while its verification is
// its own.
type tlsDispatch struct {
	base *tls.Config // UAConfig.TLSConfig, or an empty config

	mu     sync.RWMutex
	byHost map[string]*tls.Config
}

func newTLSDispatch(base *tls.Config) *tlsDispatch {
	if base == nil {
		base = &tls.Config{}
	}
	return &tlsDispatch{base: base, byHost: make(map[string]*tls.Config)}
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
// VerifyPeerCertificate and VerifyConnection.
func (d *tlsDispatch) verify(cs tls.ConnectionState) error {
	cfg := d.forHost(cs.ServerName)
	if !cfg.InsecureSkipVerify { // the user's own choice; relink never sets it
		chains, err := verifyChain(cfg, cs)
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

func verifyChain(cfg *tls.Config, cs tls.ConnectionState) ([][]*x509.Certificate, error) {
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("tls: server sent no certificate")
	}
	name := cfg.ServerName
	if name == "" {
		name = cs.ServerName
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
// trunk's configuration (from the handshake's context), else the UA's.
func (d *tlsDispatch) clientCert(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cfg := d.base
	if c, ok := cri.Context().Value(tlsCtxKey{}).(*tls.Config); ok && c != nil {
		cfg = c
	}
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
