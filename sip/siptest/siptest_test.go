package siptest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/sip"
	"github.com/relinkgo/relink/sip/siptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestOverloadAndBindings: an overloaded registrar answers 503 with
// Retry-After; once cleared, the trunk registers and the binding shows.
func TestOverloadAndBindings(t *testing.T) {
	srv, err := siptest.NewRegistrar(siptest.Config{Users: map[string]string{"alice": "secret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.SetOverload(time.Second)
	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ua.Close()
	refused := make(chan error, 1)
	tr, err := sip.NewTrunk(ua, sip.TrunkConfig{Registrars: []string{srv.URI()},
		AOR: "sip:alice@relink.test", Password: "secret",
		OnStateChange: func(sc sip.TrunkStateChange) {
			if sc.To == sip.Backoff {
				select {
				case refused <- sc.Err:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var se *sip.StatusError
	if err := <-refused; !errors.As(err, &se) || se.Code != 503 || se.RetryAfter != time.Second {
		t.Fatalf("Backoff because of %v, want a 503 with Retry-After: 1", err)
	}
	srv.ClearOverload()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for tr.State() != sip.Registered {
		if !tr.WaitForStateChange(wctx, tr.State()) {
			t.Fatalf("state %v after the overload cleared", tr.State())
		}
	}
	b := srv.Bindings("alice@relink.test")
	if len(b) != 1 || b[0].Transport != "TCP" {
		t.Fatalf("bindings %+v", b)
	}
	st := srv.Stats()
	if st.ByStatus[503] == 0 || st.ByStatus[200] == 0 || st.Bindings != 1 || st.Connections != 1 {
		t.Errorf("stats %+v", st)
	}
}
