package sip

import (
	"strconv"
	"time"
)

// TrunkState is a Trunk's registration state.
type TrunkState int

const (
	// Unregistered means not started, or stopped (the binding was removed or
	// left to expire).
	Unregistered TrunkState = iota
	// Registering means a REGISTER is waiting for admission by the registrar's
	// gate or for its answer.
	Registering
	// Registered means the registrar granted the binding and the flow is alive.
	Registered
	// Backoff means the last attempt failed for a reason that may pass (timeout,
	// transport error, 5xx, overload); the trunk waits for its backoff or
	// for the gate before trying again.
	Backoff
	// Failed means the registrar refused this trunk (credentials rejected, 403,
	// 404, 6xx). The trunk retries only after TrunkConfig.SlowRetry.
	Failed
)

// numStates is the number of TrunkStates, for arrays indexed by state.
const numStates = int(Failed) + 1

// String returns the state's name in lower case.
func (s TrunkState) String() string {
	switch s {
	case Unregistered:
		return "unregistered"
	case Registering:
		return "registering"
	case Registered:
		return "registered"
	case Backoff:
		return "backoff"
	case Failed:
		return "failed"
	}
	return "TrunkState(" + strconv.Itoa(int(s)) + ")"
}

// TrunkStateChange describes one change of a Trunk's state, passed to
// TrunkConfig.OnStateChange and FleetConfig.OnStateChange. Its first fields
// are those of backoff.GateStateChange and conn.LinkStateChange.
type TrunkStateChange struct {
	// Destination is the URI of the registrar the trunk is using (the one
	// that answered, for Registered; the one it failed on, for Backoff and
	// Failed), as configured in TrunkConfig.Registrars but without any
	// password; for a registrar looked up by name (RFC 3263), the target
	// used: "sip:IP:PORT;transport=T" (the SRV target's host name instead of
	// its address for TLS and WSS), which Fleet.Gate takes.
	Destination string
	// From and To are the states before and after.
	From, To TrunkState
	// Err is why the trunk left Registered or went to Backoff or Failed:
	// a *StatusError, ErrFlowDead, a transport error or a timeout. Nil
	// otherwise.
	Err error
	// At is when the change happened.
	At time.Time
	// Trunk is the trunk whose state changed.
	Trunk *Trunk
	// Expires is the granted binding lifetime when To is Registered (for an
	// OptionsOnly trunk, how long the answered OPTIONS counts: 1.25 ×
	// Qualify).
	Expires time.Duration
}
