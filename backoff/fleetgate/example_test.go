package fleetgate_test

import (
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/backoff/fleetgate"
)

// Every process of a fleet builds its gate towards the registrar the same
// way; they share one pace, one pause and one scout through Redis.
func ExampleNew() {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  "127.0.0.1:6379",
		ContextTimeoutEnabled: true,
		DialTimeout:           50 * time.Millisecond,
	})
	defer rdb.Close()
	fleet, err := fleetgate.New(rdb, fleetgate.Config{})
	if err != nil {
		panic(err)
	}
	gate := backoff.NewGate(backoff.GateConfig{Destination: "registrar.example:5060", Fleet: fleet})
	defer gate.Close()
}
