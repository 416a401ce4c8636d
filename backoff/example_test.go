package backoff_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	cenkalti "github.com/cenkalti/backoff/v4"

	"github.com/relinkgo/relink/backoff"
)

func ExampleExponential() {
	b := &backoff.Exponential{Base: 100 * time.Millisecond, Max: time.Second, Jitter: backoff.NoJitter}
	for range 5 {
		fmt.Println(b.NextBackOff())
	}
	// With the default FullJitter, the n-th delay is drawn from
	// [0, min(Max, Base·2^n)].
	b.Jitter = backoff.FullJitter
	b.Reset()
	d := b.NextBackOff()
	fmt.Println(d >= 0 && d <= 100*time.Millisecond)
	// Output:
	// 100ms
	// 200ms
	// 400ms
	// 800ms
	// 1s
	// true
}

func ExampleExponential_retry() {
	// The policies are cenkalti/backoff's BackOff: they work with its Retry.
	calls := 0
	err := cenkalti.Retry(func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}, &backoff.Exponential{Base: time.Millisecond})
	fmt.Println(calls, err)
	// Output: 3 <nil>
}

func ExampleNewFactory() {
	// A Link or a Trunk takes a Factory: each retry loop gets its own copy.
	mk := backoff.NewFactory(backoff.Exponential{Base: time.Second, Jitter: backoff.NoJitter})
	a, b := mk(), mk()
	fmt.Println(a.NextBackOff(), a.NextBackOff(), b.NextBackOff())
	// Output: 1s 2s 1s
}

func ExampleFlowRecovery() {
	// RFC 5626 §4.5: after the n-th failure, W = min(1800 s, 30 s·2^n) and
	// the wait is uniform in [W/2, W].
	f := &backoff.FlowRecovery{}
	for _, w := range []time.Duration{60 * time.Second, 120 * time.Second, 240 * time.Second} {
		d := f.NextBackOff()
		fmt.Println(w, d >= w/2 && d <= w)
	}
	// Output:
	// 1m0s true
	// 2m0s true
	// 4m0s true
}

func ExampleFloor() {
	f := &backoff.Floor{Policy: &backoff.Exponential{Base: time.Second, Jitter: backoff.NoJitter}}
	f.RetryAfter(30 * time.Second) // a 503 said Retry-After: 30
	d := f.NextBackOff()
	fmt.Println(d >= 30*time.Second && d <= 36*time.Second, f.NextBackOff())
	// Output: true 2s
}

func ExamplePermanent() {
	errAuth := errors.New("credentials rejected")
	calls := 0
	err := cenkalti.Retry(func() error {
		calls++
		return backoff.Permanent(errAuth) // retrying cannot help
	}, &backoff.Exponential{Base: time.Millisecond})
	fmt.Println(calls, errors.Is(err, errAuth), backoff.IsPermanent(backoff.Permanent(errAuth)))
	// Output: 1 true true
}

func ExampleNewGate() {
	gate := backoff.NewGate(backoff.GateConfig{Destination: "registrar.example:5060", Rate: 100})
	defer gate.Close()
	ctx := context.Background()
	for i := range 3 {
		permit, err := gate.Acquire(ctx) // FIFO, paced, bounded in flight
		if err != nil {
			return
		}
		if i == 1 {
			permit.Done(backoff.Overload(0)) // a 503 without Retry-After
			continue
		}
		permit.Done(backoff.Success)
	}
	s := gate.Stats()
	fmt.Println(s.State, s.Admitted, s.Succeeded, s.Overloaded)
	// Output: open 3 2 1
}

func ExampleGate_WaitForStateChange() {
	gate := backoff.NewGate(backoff.GateConfig{Destination: "registrar.example:5060"})
	defer gate.Close()
	changed := make(chan backoff.GateState)
	go func() {
		gate.WaitForStateChange(context.Background(), backoff.GateOpen)
		changed <- gate.State()
	}()
	permit, err := gate.Acquire(context.Background())
	if err != nil {
		return
	}
	permit.Done(backoff.Unreachable) // nothing got through: the gate closes
	fmt.Println(<-changed)
	// Output: closed
}

func ExampleGate_Close() {
	gate := backoff.NewGate(backoff.GateConfig{})
	gate.Close()
	_, err := gate.Acquire(context.Background())
	fmt.Println(errors.Is(err, backoff.ErrClosed), err)
	// Output: true backoff: gate closed
}
