package sip

import (
	"context"
	"strconv"
	"sync"
	"time"
)

// State is a Trunk's registration state.
type State int

const (
	// Unregistered: not started, or stopped (the binding was removed or
	// left to expire).
	Unregistered State = iota
	// Registering: a REGISTER is waiting for admission by the registrar's
	// gate or for its answer.
	Registering
	// Registered: the registrar granted the binding and the flow is alive.
	Registered
	// Backoff: the last attempt failed for a reason that may pass (timeout,
	// transport error, 5xx, overload); the trunk waits for its backoff or
	// for the gate before trying again.
	Backoff
	// Failed: the registrar refused this trunk (credentials rejected, 403,
	// 404, 6xx). The trunk retries only after TrunkConfig.SlowRetry.
	Failed
)

// numStates is the number of States, for arrays indexed by State.
const numStates = int(Failed) + 1

// String returns the state's name in lower case.
func (s State) String() string {
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
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// StateChange describes one change of a Trunk's state, passed to
// TrunkConfig.OnStateChange.
type StateChange struct {
	// Trunk is the trunk whose state changed.
	Trunk *Trunk
	// From and To are the states before and after.
	From, To State
	// Registrar is the registrar URI the trunk is using (the one that
	// answered, for Registered; the one it failed on, for Backoff and
	// Failed).
	Registrar string
	// Err is why the trunk left Registered or went to Backoff or Failed:
	// a *StatusError, ErrFlowDead, a transport error or a timeout. Nil
	// otherwise.
	Err error
	// Expires is the granted binding lifetime when To is Registered.
	Expires time.Duration
	// At is when the change happened.
	At time.Time
}

// stateBox holds a state and lets waiters block until it changes. A change
// closes the current channel and replaces it, so that no waiter misses the
// latest state and nothing needs draining (grpc-go's connectivity pattern).
type stateBox struct {
	mu    sync.Mutex
	state State
	ch    chan struct{}
}

func (b *stateBox) init() { b.ch = make(chan struct{}) }

func (b *stateBox) get() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// set changes the state and reports the previous one and whether it changed.
// hook, if not nil, runs under the box's lock before the change is visible,
// so that what it updates (a Fleet's counts) agrees with State() for anyone
// the change wakes.
func (b *stateBox) set(s State, hook func(from, to State)) (State, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.state
	if from == s {
		return from, false
	}
	b.state = s
	if hook != nil {
		hook(from, s)
	}
	close(b.ch)
	b.ch = make(chan struct{})
	return from, true
}

// wait blocks until the state differs from from, and reports true; or until
// ctx ends, and reports false.
func (b *stateBox) wait(ctx context.Context, from State) bool {
	for {
		b.mu.Lock()
		s, ch := b.state, b.ch
		b.mu.Unlock()
		if s != from {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}
