package conn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/relinkgo/relink/internal/neterr"
)

// ErrUnresponsive is the cause reported by Err (and by I/O on the Conn) when
// the peer stopped answering: no inbound byte within ProbeTimeout of a probe,
// or the kernel gave up on the connection (TCP_USER_TIMEOUT or keepalive,
// reported as ETIMEDOUT). The errors that carry it satisfy
// errors.Is(err, ErrUnresponsive), are net.Errors whose Timeout() is true, and
// wrap the kernel's syscall.ETIMEDOUT when that was the trigger.
var ErrUnresponsive error = &unresponsiveError{}

// unresponsiveError is ErrUnresponsive with its trigger.
type unresponsiveError struct {
	cause error // nil for ErrUnresponsive itself
}

func (e *unresponsiveError) Error() string {
	if e.cause == nil {
		return "conn: peer unresponsive"
	}
	return "conn: peer unresponsive: " + e.cause.Error()
}

// Timeout reports true: the peer did not answer in time.
func (e *unresponsiveError) Timeout() bool { return true }

// Temporary reports false: the connection is gone.
func (e *unresponsiveError) Temporary() bool { return false }

// Is makes every unresponsiveError match ErrUnresponsive.
func (e *unresponsiveError) Is(target error) bool { return target == ErrUnresponsive }

// Unwrap returns the trigger: the kernel's error or the probe's.
func (e *unresponsiveError) Unwrap() error { return e.cause }

var _ net.Error = (*unresponsiveError)(nil)

// errClosed is Err's value after Close.
var errClosed = fmt.Errorf("conn: closed: %w", net.ErrClosed)

// errNoResponse is the death cause when a probe went unanswered.
var errNoResponse = &unresponsiveError{cause: errors.New("no inbound byte within ProbeTimeout of a probe")}

// Death reasons, the error.type attribute of relink.conn.deaths.
const (
	reasonUnresponsive  = iota // probe unanswered
	reasonKernelTimeout        // ETIMEDOUT from TCP_USER_TIMEOUT or keepalive
	reasonProbeError           // the Prober failed
	reasonEOF                  // the peer closed its side
	reasonReset                // connection reset or broken pipe
	reasonOther                // any other I/O error
	reasonClosed               // Close was called (not a death; not counted)
	numReasons
)

var reasonNames = [numReasons]string{"unresponsive", "kernel_timeout", "probe_error", "eof", "reset", "_OTHER", "closed"}

// classifyIOError turns an error returned by the underlying connection's
// Read or Write into a terminal cause and its reason. terminal is false for
// errors that do not end the connection (a deadline set by the caller).
func classifyIOError(err error) (cause error, reason int, terminal bool) {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return err, reasonOther, false
	case errors.Is(err, io.EOF):
		return io.EOF, reasonEOF, true
	case errors.Is(err, syscall.ETIMEDOUT):
		inner := err
		if oe, ok := errors.AsType[*net.OpError](err); ok {
			inner = oe.Err // the caller's *net.OpError names the op and addresses
		}
		return &unresponsiveError{cause: inner}, reasonKernelTimeout, true
	case neterr.Reset(err):
		return err, reasonReset, true
	case errors.Is(err, net.ErrClosed):
		// Closed under us (by Close, racing with this I/O, or by the
		// runtime): report it as is.
		return err, reasonOther, true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		// A timeout that is not ours, e.g. from a TLS layer's deadline.
		return err, reasonOther, false
	}
	return err, reasonOther, true
}

// probeFailure turns a Prober's error into a death cause: a probe that could
// not be written within ProbeTimeout means the peer is not reading, so it is
// unresponsive; other errors are reported as they are.
func probeFailure(err error) (error, int) {
	var ne net.Error
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ETIMEDOUT) || (errors.As(err, &ne) && ne.Timeout()) {
		return &unresponsiveError{cause: fmt.Errorf("probe not written within ProbeTimeout: %w", err)}, reasonUnresponsive
	}
	return fmt.Errorf("conn: probe failed: %w", err), reasonProbeError
}

// ErrTLSHandshake is wrapped by the error of a TLS handshake that failed
// after the connection was made, because of TLS itself: a certificate the
// client refused (unknown authority, hostname mismatch, expired), an alert
// from the server (it refused ours), or a peer that answered something
// other than TLS (a plain TCP port). These are configuration errors: a
// Link retries them slowly (LinkConfig.SlowRetry). The error names the
// address. A handshake cut by the network (a timeout, a reset, the peer
// closing) does not wrap it.
var ErrTLSHandshake = errors.New("conn: TLS handshake failed")

// ErrHandshakeTimeout is wrapped by the error of a Link's attempt whose TLS
// handshake and LinkConfig.Handshake did not complete within
// HandshakeTimeout. The error names the address.
var ErrHandshakeTimeout = errors.New("conn: handshake timed out")
