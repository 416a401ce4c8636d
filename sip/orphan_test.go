package sip

import (
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/registrar"
)

// bindingBook is a registrar's view of one trunk's binding: a REGISTER
// binds (or unbinds, Expires 0) when it arrives, whatever its answer.
type bindingBook struct {
	mu    sync.Mutex
	until time.Time
}

func (b *bindingBook) see(req *sipmsg.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := req.GetHeader("Expires")
	if h == nil {
		return
	}
	if d, ok := parseExpires(h.Value()); ok {
		b.until = time.Now().Add(d)
	}
}

func (b *bindingBook) held() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.until)
}

// TestStopLeavesNoBinding: after Run returns, no binding the trunk may have
// created is left: not that of a REGISTER whose 200 arrives after Run
// returned, nor that of a failed refresh.
func TestStopLeavesNoBinding(t *testing.T) {
	ua := newTestUA(t)
	for _, tc := range []struct {
		name   string
		answer func(n int, req *sipmsg.Request) *sipmsg.Response
		stop   time.Duration
	}{
		{name: "stopped mid-REGISTER", stop: time.Second,
			answer: func(_ int, req *sipmsg.Request) *sipmsg.Response { return ok(req) }},
		{name: "after a failed refresh", stop: 150 * time.Second,
			answer: func(n int, req *sipmsg.Request) *sipmsg.Response {
				if n == 2 { // the refresh
					return sipmsg.NewResponseFromRequest(req, 500, "Oops", nil)
				}
				if n > 2 && req.GetHeader("Expires").Value() != "0" {
					return nil // the retry is lost
				}
				return ok(req)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var book bindingBook
				reg := &fakeRegistrar{rtt: 2 * time.Second,
					answer: func(n int, req *sipmsg.Request) *sipmsg.Response {
						book.see(req)
						return tc.answer(n, req)
					}}
				tr := virtualTrunk(t, ua, reg, TrunkConfig{Expires: 120 * time.Second,
					RequestTimeout: 5 * time.Second, UnregisterTimeout: 10 * time.Second})
				runFor(tr, tc.stop)
				if book.held() {
					t.Errorf("a binding is left after Run returned; sent %+v", reg.sent())
				}
			})
		})
	}
}

// TestStopLeavesNoBindingRegistrar: against the in-process registrar, a
// trunk stopped while the 200 to its REGISTER is held back leaves no
// binding once Run has returned.
func TestStopLeavesNoBindingRegistrar(t *testing.T) {
	var held atomic.Bool
	reg := newRegistrar(t, registrar.Config{Password: testPassword, MinExpires: -1,
		ModifyResponse: func(_ *sipmsg.Request, res *sipmsg.Response) {
			if res.StatusCode == 200 && held.CompareAndSwap(false, true) {
				time.Sleep(time.Second) // the binding is made; its 200 comes late
			}
		}})
	tr, _ := trunkOn(t, TrunkConfig{RequestTimeout: 5 * time.Second, UnregisterTimeout: 3 * time.Second}, reg.URI())
	stop := running(t, tr)
	deadline := time.Now().Add(5 * time.Second)
	for !held.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if b := reg.Bindings("sip:alice@relink.test"); len(b) != 0 {
		t.Errorf("bindings left after Run returned: %+v", b)
	}
}
