package registrar

import (
	"testing"

	"github.com/relinkgo/relink/internal/testkit"
)

// BenchmarkRegister measures REGISTER transactions per second served to
// 2,000 trunks that share one TCP connection (one sipgo client), each
// refreshing with digest credentials on its kept nonce (one transaction per
// refresh), 64 in flight.
func BenchmarkRegister(b *testing.B) {
	r := newRegistrar(b, Config{Password: "secret", SampleInterval: -1})
	const trunks = 2000
	regs := testkit.Registerers(b, testkit.NewSipgoClient(b), r.URI(), "trunk", "secret", trunks)
	testkit.RegisterAll(b, regs, 3600, 64)
	if st := r.Stats(); st.Bindings != trunks || st.Accepted != 1 {
		b.Fatalf("after initial registration: %+v", st)
	}
	testkit.RefreshParallel(b, regs, 3600)
}
