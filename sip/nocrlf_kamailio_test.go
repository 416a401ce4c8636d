package sip

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/kamailio"
)

// TestKamailioNoCRLFAnswer (60 s of real time): Kamailio with its CRLF
// answer turned off (a registrar that does not implement RFC 5626). A
// trunk pinging every second keeps its flow for 60 s: 0 flow deaths (relink
// falls back to OPTIONS), no re-registration; and an INVITE relayed by
// Kamailio over that flow to a sipgo server on the same UA rings for 20 s
// and is answered (before, each unanswered ping closed the flow and sipgo
// failed the ringing INVITE with "transaction transport error").
func TestKamailioNoCRLFAnswer(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{NoCRLFAnswer: true})
	var deaths atomic.Int32
	ua := plainUA(t, UAConfig{OnFlowDeath: func(FlowDeath) { deaths.Add(1) }})
	ch := &changes{}
	tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{k.URI()}, AOR: "sip:bob@relink.test",
		Password: k.Password(), KeepAlive: time.Second, KeepAliveTimeout: time.Second, OnStateChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	start := time.Now()

	srv, err := sipgo.NewServer(ua.UserAgent())
	if err != nil {
		t.Fatal(err)
	}
	const ring = 20 * time.Second
	srv.OnInvite(func(req *sipmsg.Request, tx sipmsg.ServerTransaction) {
		_ = tx.Respond(sipmsg.NewResponseFromRequest(req, 180, "Ringing", nil))
		select {
		case <-time.After(ring):
			_ = tx.Respond(sipmsg.NewResponseFromRequest(req, 200, "OK", nil))
		case <-tx.Done():
		}
	})
	cli, err := sipgo.NewClient(ua.UserAgent())
	if err != nil {
		t.Fatal(err)
	}
	inv := sipmsg.NewRequest(sipmsg.INVITE, sipmsg.Uri{Scheme: "sip", User: "bob", Host: "relink.test"})
	inv.SetDestination(k.Addr())
	inv.SetTransport("TCP")
	ctx, cancel := context.WithTimeout(context.Background(), ring+10*time.Second)
	defer cancel()
	tx, err := cli.TransactionRequest(ctx, inv)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Terminate()
	var got []int
	for len(got) == 0 || got[len(got)-1] < 200 {
		select {
		case res := <-tx.Responses():
			got = append(got, res.StatusCode)
		case <-tx.Done():
			t.Fatalf("INVITE ended after %v with %v (responses %v)", time.Since(start), tx.Err(), got)
		case <-ctx.Done():
			t.Fatalf("INVITE: no final response in %v (responses %v)", ring+10*time.Second, got)
		}
	}
	t.Logf("INVITE: responses %v after %v; %d flow deaths", got, time.Since(start), deaths.Load())
	if got[len(got)-1] != 200 {
		t.Errorf("INVITE answered %v, want 180 then 200", got)
	}
	time.Sleep(time.Until(start.Add(60 * time.Second)))
	st := kamStats(t, k)
	t.Logf("60 s: %d flow deaths, %d REGISTERs, %d OPTIONS at Kamailio", deaths.Load(), st.Registers, st.Options)
	if n := deaths.Load(); n != 0 || ua.mon.deaths.Load() != 0 {
		t.Errorf("%d flow deaths in 60 s against a registrar that answers OPTIONS, want 0", n)
	}
	if n := len(ch.all(Registering)); n != 1 || tr.State() != Registered {
		t.Errorf("%d registrations, state %v: the trunk left Registered", n, tr.State())
	}
}
