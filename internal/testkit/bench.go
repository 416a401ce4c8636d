package testkit

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
)

// Registerers returns n Registerers on client, users prefix0 … prefix<n-1>,
// all with one password, keeping their nonces.
func Registerers(tb testing.TB, client *sipgo.Client, registrar, prefix, password string, n int) []*Registerer {
	tb.Helper()
	regs := make([]*Registerer, n)
	for i := range regs {
		r, err := NewRegisterer(RegisterConfig{Client: client, Registrar: registrar,
			User: fmt.Sprintf("%s%d", prefix, i), Password: password})
		if err != nil {
			tb.Fatal(err)
		}
		regs[i] = r
	}
	return regs
}

// RegisterAll registers every Registerer for expires seconds, inFlight at a
// time, each within 10 s, and fails tb unless each gets a 200.
func RegisterAll(tb testing.TB, regs []*Registerer, expires, inFlight int) {
	tb.Helper()
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, inFlight))
	for _, r := range regs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if res, err := register10s(r, expires); err != nil || res.StatusCode != 200 {
				tb.Errorf("initial register: %v %v", res, err)
			}
		})
	}
	wg.Wait()
}

// RefreshParallel runs b.N refreshes of the registered regs from
// b.RunParallel's goroutines (32 per CPU), round robin, one goroutine on a
// Registerer at a time, and reports registers/s and allocations.
func RefreshParallel(b *testing.B, regs []*Registerer, expires int) {
	locks := make([]sync.Mutex, len(regs))
	var next atomic.Int64
	b.SetParallelism(32)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % len(regs)
			locks[i].Lock()
			res, err := register10s(regs[i], expires)
			locks[i].Unlock()
			if err != nil || res.StatusCode != 200 {
				b.Errorf("refresh: %v %v", res, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registers/s")
}

func register10s(r *Registerer, expires int) (*sipmsg.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.Register(ctx, expires)
}
