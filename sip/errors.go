package sip

import (
	"errors"
	"strconv"
	"time"
)

var (
	// ErrFlowDead means the connection the trunk was registered over stopped
	// answering keepalive pings (or qualify requests) within the timeout, or
	// was closed. The error reported (TrunkStateChange.Err) matches it with
	// errors.Is, unwraps to the cause, and is a net.Error whose Timeout() is
	// true when the peer went silent.
	ErrFlowDead = errors.New("sip: flow dead")
	// ErrCredentialsRejected means the registrar challenged credentials that were
	// computed from its own fresh challenge, so the username or password is
	// wrong. It wraps the 401/407 *StatusError.
	ErrCredentialsRejected = errors.New("sip: credentials rejected")
	// ErrTimeout means no final response to a REGISTER within
	// TrunkConfig.RequestTimeout. It satisfies net.Error with Timeout() true.
	ErrTimeout = errors.New("sip: request timed out")
	// ErrBindingExpired means a refresh could not be sent before the
	// binding it renews ended (the registrar's gate was paused, or busy,
	// for longer): the trunk is no longer registered there and moves on to
	// its next registrar, if it has one.
	ErrBindingExpired = errors.New("sip: binding expired before its refresh")
	// ErrRedirectRefused means a 3xx was not followed, or its target not
	// given credentials: it pointed to a weaker transport than the
	// configured registrar's (TLS to TCP, TCP to UDP), or the host it
	// pointed to challenged and TrunkConfig.RedirectCredentials is off.
	ErrRedirectRefused = errors.New("sip: redirect refused")
	// ErrTooManyRedirects means more 3xx in a row than a trunk follows.
	ErrTooManyRedirects = errors.New("sip: too many redirects")
	// ErrBadResponse means the response could not be used (no challenge relink
	// can answer, a 423 without progress, a 3xx without Contact).
	ErrBadResponse = errors.New("sip: unusable response")
)

// StatusError is a final non-2xx response to a REGISTER.
type StatusError struct {
	// Code and Reason are the response's status line.
	Code   int
	Reason string
	// RetryAfter is the response's Retry-After (clamped to MaxRetryAfter),
	// zero if absent.
	RetryAfter time.Duration
	// Registrar is the URI the request went to. Error never prints a
	// password found in it.
	Registrar string
}

// Error returns "sip: <registrar> answered <code> <reason>".
func (e *StatusError) Error() string {
	s := "sip: " + redactURI(e.Registrar) + " answered " + strconv.Itoa(e.Code)
	if e.Reason != "" {
		s += " " + e.Reason
	}
	if e.RetryAfter > 0 {
		s += " (retry after " + e.RetryAfter.String() + ")"
	}
	return s
}

// timeoutError is a net.Error whose Timeout() is true, wrapping a sentinel.
type timeoutError struct{ err error }

func (e *timeoutError) Error() string   { return e.err.Error() }
func (e *timeoutError) Unwrap() error   { return e.err }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }
