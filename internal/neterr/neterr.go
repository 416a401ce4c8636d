// Package neterr classifies network errors, once for every package: whether
// an error means the destination (or the path to it) did not answer, and a
// low-cardinality name for the error.type attribute of metrics and spans.
// conn's Link and sip's Trunk both judge their attempts with it, so that a
// refused connection or a timeout means the same thing to every Gate.
package neterr

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
)

// Unreachable reports whether err means that the destination, or the path to
// it, did not answer (a timeout, a refused or reset connection, an
// unreachable host or network, a temporary DNS failure, a handshake cut by
// EOF), as opposed to a failure of the client's own (a bad address, a
// certificate rejected, a cancelled context).
func Unreachable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		return true
	}
	if dns, ok := errors.AsType[*net.DNSError](err); ok {
		return dns.IsTimeout || dns.IsTemporary
	}
	for _, target := range unreachableErrs {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}

var unreachableErrs = []error{
	context.DeadlineExceeded,
	syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
	syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EHOSTDOWN, syscall.ENETDOWN,
	syscall.ETIMEDOUT, syscall.EPIPE,
	// A custom Dial whose handshake (TLS, a proxy) saw the peer hang up.
	io.EOF, io.ErrUnexpectedEOF,
}

// Reset reports whether err is a connection reset, abort or broken pipe.
func Reset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE)
}

// Type returns a low-cardinality name for err, for the error.type attribute:
// "canceled", "dns", "connection_refused", "connection_reset",
// "host_unreachable", "network_unreachable", "eof", "timeout", or "_OTHER"
// (OpenTelemetry's name for the rest).
func Type(err error) string {
	_, isDNS := errors.AsType[*net.DNSError](err)
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case isDNS:
		return "dns"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection_refused"
	case Reset(err):
		return "connection_reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return "host_unreachable"
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return "network_unreachable"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case timeout(err):
		return "timeout"
	}
	return "_OTHER"
}

func timeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}
