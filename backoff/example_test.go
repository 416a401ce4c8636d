package backoff_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	cenkalti "github.com/cenkalti/backoff/v4"

	"github.com/relinkgo/relink/backoff"
)

func ExampleExponential() {
	// Seeded for a reproducible example; leave Rand nil in production.
	b := &backoff.Exponential{Base: 100 * time.Millisecond, Max: time.Second, Jitter: backoff.NoJitter}
	for range 5 {
		fmt.Println(b.NextBackOff())
	}
	b.Jitter = backoff.FullJitter
	b.Rand = rand.New(rand.NewPCG(1, 2))
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

func ExampleFlowRecovery() {
	f := &backoff.FlowRecovery{} // RFC 5626 §4.5: base 30 s, max 1800 s
	fmt.Println(f.Window(1), f.Window(3), f.Window(10))
	// Output: 1m0s 4m0s 30m0s
}

func ExampleFloor() {
	f := &backoff.Floor{Policy: &backoff.Exponential{Base: time.Second, Jitter: backoff.NoJitter}}
	f.RetryAfter(30 * time.Second) // a 503 said Retry-After: 30
	d := f.NextBackOff()
	fmt.Println(d >= 30*time.Second && d <= 36*time.Second, f.NextBackOff())
	// Output: true 2s
}

func ExampleGate() {
	gate := backoff.NewGate(backoff.GateConfig{Destination: "registrar.example:5060", Rate: 100})
	ctx := context.Background()
	for i := range 3 {
		permit, err := gate.Acquire(ctx)
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
