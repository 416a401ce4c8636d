package sip

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/kamailio"
)

// TestRecoveryKamailio measures a Fleet's mass recovery against a real
// Kamailio that admits at most C REGISTERs per second (503 + Retry-After
// beyond): N trunks registered through a proxy, the path goes silent (the
// proxy freezes, the far end forgets the connections), then comes back; the
// clock starts when the path returns. Opt-in (it takes about a minute):
//
//	RELINK_SIP_RECOVERY=1 go test -run TestRecoveryKamailio -v ./sip
//
// RELINK_SIP_N and RELINK_SIP_C override N (2000) and C (200/s);
// RELINK_SIP_RATE=1 tells the gate C instead of letting it learn.
func TestRecoveryKamailio(t *testing.T) {
	if os.Getenv("RELINK_SIP_RECOVERY") == "" {
		t.Skip("set RELINK_SIP_RECOVERY=1 to run the recovery measurement")
	}
	n, c := 2000, 200.0
	if v, err := strconv.Atoi(os.Getenv("RELINK_SIP_N")); err == nil {
		n = v
	}
	if v, err := strconv.ParseFloat(os.Getenv("RELINK_SIP_C"), 64); err == nil {
		c = v
	}
	k := kamailio.Start(t, kamailio.Options{Rate: c, Children: 4})
	px, err := faultproxy.New(k.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	uri := "sip:" + px.Addr() + ";transport=tcp"
	var gc backoff.GateConfig
	if os.Getenv("RELINK_SIP_RATE") != "" {
		gc.Rate = c
	}
	f := NewFleet(newTestUA(t), FleetConfig{Gate: gc})
	const ka, kto = 2 * time.Second, time.Second
	for i := range n {
		if _, err := f.Add(TrunkConfig{Registrars: []string{uri}, AOR: fmt.Sprintf("sip:r%d@relink.test", i),
			Password: k.Password(), KeepAlive: ka, KeepAliveTimeout: kto, RequestTimeout: 5 * time.Second,
		}); err != nil {
			t.Fatal(err)
		}
	}
	running(t, f)
	start := time.Now()
	waitFleet(t, f, Registered, n, time.Duration(float64(n)/c*10+10)*time.Second)
	t.Logf("initial registration of %d trunks: %v (N/C = %.1f s)", n, time.Since(start), float64(n)/c)
	time.Sleep(3 * time.Second)

	px.Freeze()
	time.Sleep(ka + kto + 3*time.Second) // longer than the detection bound
	if st := f.Stats(); st.Registered != 0 {
		t.Errorf("%d trunks still registered after the detection bound", st.Registered)
	}
	st0, _ := k.Stats()
	px.Forget()
	restored := time.Now()
	waitFleet(t, f, Registered, n, time.Duration(float64(n)/c*10+30)*time.Second)
	took := time.Since(restored)
	st1, _ := k.Stats()
	regs := st1.Registers - st0.Registers
	shed := st1.Shed - st0.Shed
	t.Logf("recovered %d trunks in %.2f s = %.2f × N/C; 503s %d (%.1f %% of N); %.2f REGISTERs per trunk; gate %+v",
		n, took.Seconds(), took.Seconds()/(float64(n)/c), shed, 100*float64(shed)/float64(n),
		float64(regs)/float64(n), f.GateStats())
}
