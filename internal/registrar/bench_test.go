package registrar

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkRegister measures REGISTER transactions per second served to
// 2,000 trunks that share one TCP connection (one sipgo client), each
// refreshing with digest credentials on its kept nonce (one transaction per
// refresh), 64 in flight.
func BenchmarkRegister(b *testing.B) {
	r := newRegistrar(b, Config{Password: "secret", SampleInterval: -1})
	cl := newSipgoClient(b)
	const trunks = 2000
	clients := make([]*client, trunks)
	locks := make([]sync.Mutex, trunks)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range clients {
		clients[i] = newClientOn(b, cl, r.URI(), fmt.Sprintf("trunk%d", i), "secret")
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if res, err := clients[i].tryRegister(3600); err != nil || res.StatusCode != 200 {
				b.Errorf("initial register: %v %v", res, err)
			}
		}()
	}
	wg.Wait()
	if st := r.Stats(); st.Bindings != trunks || st.Accepted != 1 {
		b.Fatalf("after initial registration: %+v", st)
	}

	var next atomic.Int64
	b.SetParallelism(32) // 64 goroutines on 2 CPUs
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % trunks
			locks[i].Lock()
			res, err := clients[i].tryRegister(3600)
			locks[i].Unlock()
			if err != nil || res.StatusCode != 200 {
				b.Errorf("refresh: %v %v", res, err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "registers/s")
}
