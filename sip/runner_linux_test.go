//go:build linux

package sip

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/registrar"
)

// TestConfiguredContactConnectBounded (issue 10, waits nobody watches): a
// trunk whose Contact is configured (or kept, RFC 5626) asks for no
// connection before its REGISTER, so sipgo dialled it inside the
// transaction, bounded only by RequestTimeout: a connect into a black hole
// waited for the kernel's next SYN retransmission (1, 3, 7, 15, 31 s after
// the first), up to about 30 s after the path had returned. Every REGISTER
// now connects through relink's bounded, redialled connect: here the path
// returns 8 s into the attempt (the kernel's next SYN would be at 15 s) and
// the trunk is registered within 2 s.
func TestConfiguredContactConnectBounded(t *testing.T) {
	p := netns.ForTest(t)
	const port = 5090
	var reg *registrar.Registrar
	if err := p.Server().Do(func() (err error) {
		reg, err = registrar.New(registrar.Config{Addr: fmt.Sprintf("%s:%d", netns.ServerIP, port),
			Logger: discard, MinExpires: -1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	restore, err := p.BlackHole(port)
	if err != nil {
		t.Fatal(err)
	}
	ch := &changes{}
	tr, err := NewTrunk(newTestUA(t), TrunkConfig{
		Registrars: []string{"sip:" + net.JoinHostPort(netns.ServerIP.String(), fmt.Sprint(port)) + ";transport=tcp"},
		AOR:        "sip:carol@relink.test", Contact: "sip:carol@" + netns.ClientIP.String() + ":5060;transport=tcp",
		RequestTimeout: 20 * time.Second, OnStateChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Client().Do(func() error { return tr.Run(ctx) })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return")
		}
	})
	time.Sleep(8 * time.Second)
	if tr.State() == Registered {
		t.Fatal("registered through a black hole")
	}
	if err := restore(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitState(t, tr, Registered, 20*time.Second)
	took := time.Since(back)
	t.Logf("registered %v after the path returned", took)
	if took > 2*time.Second {
		t.Errorf("registered %v after the path returned, want ≤ 2 s (a bounded, redialled connect)", took)
	}
}
