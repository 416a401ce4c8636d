// Package statebox holds a state value that waiters can block on until it
// changes: the one implementation behind Gate.WaitForStateChange,
// Link.WaitForStateChange and Trunk.WaitForStateChange.
//
// A change closes the current channel and replaces it, so that no waiter
// misses the latest state and nothing needs draining (grpc-go's
// connectivity pattern).
package statebox

import (
	"context"
	"sync"
)

// Box holds a state of type S. The zero value holds S's zero value and is
// ready to use. A Box must not be copied after first use.
type Box[S comparable] struct {
	mu    sync.Mutex
	state S
	ch    chan struct{} // closed and replaced on each change; nil until needed
}

// Get returns the current state.
func (b *Box[S]) Get() S {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

// Set changes the state to s and reports the previous state and whether it
// changed. hook, if not nil, runs under the box's lock before the change is
// visible to Get and Wait, so that what it updates (a Fleet's counts, a
// metric by state) agrees with Get for anyone the change wakes. hook must not
// call back into the Box.
func (b *Box[S]) Set(s S, hook func(from, to S)) (from S, changed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	from = b.state
	if from == s {
		return from, false
	}
	b.state = s
	if hook != nil {
		hook(from, s)
	}
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
	return from, true
}

// Wait blocks until the state differs from from and reports true, or until
// ctx ends and reports false. It returns at once if the state already
// differs, so a caller that loops on Wait never misses the latest state (it
// may skip states that were left before it looked).
func (b *Box[S]) Wait(ctx context.Context, from S) bool {
	for {
		b.mu.Lock()
		s := b.state
		if s != from {
			b.mu.Unlock()
			return true
		}
		if b.ch == nil {
			b.ch = make(chan struct{})
		}
		ch := b.ch
		b.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}
