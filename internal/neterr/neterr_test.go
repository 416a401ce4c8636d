package neterr

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestClassify(t *testing.T) {
	op := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: err}}
	}
	for _, tc := range []struct {
		name        string
		err         error
		unreachable bool
		typ         string
	}{
		{"nil", nil, false, "_OTHER"},
		{"refused", op(syscall.ECONNREFUSED), true, "connection_refused"},
		{"reset", op(syscall.ECONNRESET), true, "connection_reset"},
		{"broken pipe", op(syscall.EPIPE), true, "connection_reset"},
		{"host unreachable", op(syscall.EHOSTUNREACH), true, "host_unreachable"},
		{"net down", op(syscall.ENETDOWN), true, "network_unreachable"},
		{"kernel timeout", op(syscall.ETIMEDOUT), true, "timeout"},
		{"deadline", fmt.Errorf("dial: %w", context.DeadlineExceeded), true, "timeout"},
		{"io timeout", os.ErrDeadlineExceeded, true, "timeout"},
		{"canceled", fmt.Errorf("dial: %w", context.Canceled), false, "canceled"},
		{"eof in handshake", fmt.Errorf("tls: %w", io.EOF), true, "eof"},
		{"dns temporary", &net.DNSError{Err: "server misbehaving", IsTemporary: true}, true, "dns"},
		{"dns not found", &net.DNSError{Err: "no such host", IsNotFound: true}, false, "dns"},
		{"certificate", &x509.UnknownAuthorityError{}, false, "_OTHER"},
		{"other", errors.New("boom"), false, "_OTHER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Unreachable(tc.err); got != tc.unreachable {
				t.Errorf("Unreachable = %v, want %v", got, tc.unreachable)
			}
			if tc.err == nil {
				return
			}
			if got := Type(tc.err); got != tc.typ {
				t.Errorf("Type = %q, want %q", got, tc.typ)
			}
		})
	}
}
