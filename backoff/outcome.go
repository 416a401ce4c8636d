package backoff

import (
	"math"
	"time"
)

// Outcome is what an admitted attempt reports to its Gate through
// Permit.Done (or what Gate.Observe learns outside one): Success,
// ClientFailure, Unreachable, UnreachableSince(t) or Overload(retryAfter).
//
// An Outcome is a small immutable value: the three plain outcomes are
// constants (no package variable anyone could reassign), the two with a
// parameter carry it in the same 64 bits, so passing any of them costs no
// allocation, and a variable holding Unreachable can later hold
// UnreachableSince(t). The zero value is Success. Build outcomes only with
// these names: the encoding is not API.
type Outcome int64

// Encoding: the low 2 bits are the kind; the rest is a parameter —
// Overload's Retry-After in nanoseconds, UnreachableSince's time in Unix
// nanoseconds (zero: none).
const (
	kindBits = 2
	kindMask = 1<<kindBits - 1
	maxParam = math.MaxInt64 >> kindBits
)

// The plain outcomes.
const (
	// Success: the destination served the attempt.
	Success Outcome = iota
	// ClientFailure: the destination answered, but the failure is this
	// client's alone (bad credentials, a forbidden identity). It proves the
	// destination reachable and does not slow anyone else down; the client
	// backs off on its own policy.
	ClientFailure
	// Unreachable: the attempt timed out, was refused or reset. When no
	// attempt has succeeded since this one was admitted, the gate closes and
	// scouts; otherwise the destination is alive but struggling, and the
	// outcome counts as overload.
	Unreachable
	kindOverload
)

// UnreachableSince is Unreachable for Gate.Observe, from a path that has
// been silent since t (a flow's last inbound byte): it closes the gate unless
// an attempt succeeded more than a second after t, which proves the
// destination reachable (the dead path was a straggler, such as a connection
// opened into an outage and found dead after the path came back). A zero t,
// or one before 1970, is plain Unreachable.
func UnreachableSince(t time.Time) Outcome {
	if t.IsZero() || t.Unix() <= 0 || t.Unix() >= maxParam/int64(time.Second) {
		return Unreachable
	}
	return Outcome(t.UnixNano()<<kindBits) | Unreachable
}

// Overload reports that the destination rejected the attempt because it is
// overloaded (a SIP or HTTP 503). A positive retryAfter (the server's
// Retry-After) pauses the whole gate for that long, as PushBack does.
func Overload(retryAfter time.Duration) Outcome {
	d := min(max(retryAfter, 0), maxParam)
	return Outcome(d<<kindBits) | kindOverload
}

func (o Outcome) kind() Outcome { return o & kindMask }
func (o Outcome) param() int64  { return int64(o) >> kindBits }

// RetryAfter returns the Retry-After carried by an Overload outcome, or zero.
func (o Outcome) RetryAfter() time.Duration {
	if o.kind() != kindOverload {
		return 0
	}
	return time.Duration(o.param())
}

// since returns the time carried by UnreachableSince, or zero.
func (o Outcome) since() time.Time {
	if o.kind() != Unreachable || o.param() == 0 {
		return time.Time{}
	}
	return time.Unix(0, o.param())
}

// String names the outcome: "success", "client-failure", "unreachable",
// "overload" or "overload(retry-after 1s)".
func (o Outcome) String() string {
	switch o.kind() {
	case Success:
		return "success"
	case ClientFailure:
		return "client-failure"
	case Unreachable:
		return "unreachable"
	}
	if ra := o.RetryAfter(); ra > 0 {
		return "overload(retry-after " + ra.String() + ")"
	}
	return "overload"
}
