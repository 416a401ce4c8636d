package sip

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
)

// ErrTLSConfig means the TCP connection to a TLS registrar was made but
// the handshake failed (an untrusted or mismatched certificate, a plain
// TCP port): a configuration error, treated like rejected credentials
// (state Failed, SlowRetry). The error names the registrar.
var ErrTLSConfig = errors.New("sip: TLS handshake failed")

// tlsConfigError reports whether err is a TLS handshake that failed after
// the TCP connect: a certificate crypto/tls refused, a TLS alert or a
// non-TLS answer, or (sipgo v1.7.3 wraps every handshake failure in "TLS
// handshake error: %w", its only mark for an EOF from a plain TCP port)
// any error sipgo reports as such, or relink's own ErrTLSConfig. A
// handshake that timed out (a path lost during it, a bounded connection
// attempt) is not: the path is the suspect, not the configuration.
func tlsConfigError(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrTLSConfig) {
		return true
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return false
	}
	var (
		verify   *tls.CertificateVerificationError
		record   tls.RecordHeaderError
		alert    tls.AlertError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	return errors.As(err, &verify) || errors.As(err, &record) || errors.As(err, &alert) ||
		errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) ||
		strings.Contains(err.Error(), "TLS handshake error")
}
