package backoff

import (
	"errors"
	"time"
)

// ErrOverloaded is matched by errors.Is on every error Overloaded returns.
var ErrOverloaded = errors.New("backoff: overloaded")

// overloadedError is the error Overloaded returns.
type overloadedError struct {
	err        error // may be nil
	retryAfter time.Duration
}

func (e *overloadedError) Error() string {
	msg := ErrOverloaded.Error()
	if e.retryAfter > 0 {
		msg += ", retry after " + e.retryAfter.String()
	}
	if e.err != nil {
		msg += ": " + e.err.Error()
	}
	return msg
}

// Is makes the error match ErrOverloaded.
func (e *overloadedError) Is(target error) bool { return target == ErrOverloaded }

// Unwrap returns the wrapped error (nil for Overloaded(nil, d)).
func (e *overloadedError) Unwrap() error { return e.err }

// Overloaded wraps err (nil allowed: a plain "backoff: overloaded" error) as
// the server's push-back: "overloaded, retry after d" (d <= 0: no hint). A
// Gate hears it as Outcome Overload(d): conn.Link reports a Handshake or
// Session error made by Overloaded to its Gate that way, which pauses the
// Gate for d when d > 0 and counts against its pace in any case.
// errors.Is(Overloaded(err, d), err) holds, and so does
// errors.Is(Overloaded(err, d), ErrOverloaded).
func Overloaded(err error, retryAfter time.Duration) error {
	return &overloadedError{err: err, retryAfter: max(retryAfter, 0)}
}

// RetryAfter reports whether err (anywhere in its chain) was made by
// Overloaded, and its hint (zero when it had none). The outermost
// Overloaded in the chain wins.
func RetryAfter(err error) (d time.Duration, ok bool) {
	var o *overloadedError
	if !errors.As(err, &o) {
		return 0, false
	}
	return o.retryAfter, true
}

// OverloadOutcome returns the Outcome a Gate should hear for err, made by
// Overloaded: Overload(d) with its hint; ok is false when err was not made
// by Overloaded.
func OverloadOutcome(err error) (o Outcome, ok bool) {
	d, ok := RetryAfter(err)
	if !ok {
		return 0, false
	}
	return Overload(d), true
}
