package sip_test

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/sip"
	"github.com/relinkgo/relink/sip/siptest"
)

var quiet = slog.New(slog.DiscardHandler)

// quietUA is sip.NewUA with sipgo's own logs discarded.
func quietUA() (*sip.UA, error) {
	return sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(quiet)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(quiet)},
	})
}

func ExampleTrunk() {
	// An in-process registrar stands for the provider here.
	reg, err := siptest.NewRegistrar(siptest.Config{Password: "secret"})
	if err != nil {
		panic(err)
	}
	defer reg.Close()

	ua, err := quietUA()
	if err != nil {
		panic(err)
	}
	defer ua.Close()

	registered := make(chan struct{})
	trunk, err := sip.NewTrunk(ua, sip.TrunkConfig{
		Registrars: []string{reg.URI()}, // "sip:127.0.0.1:PORT;transport=tcp"
		AOR:        "sip:alice@relink.test",
		Password:   "secret",
		OnStateChange: func(sc sip.TrunkStateChange) {
			fmt.Println(sc.From, "→", sc.To, sc.Expires)
			if sc.To == sip.Registered {
				close(registered)
			}
		},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- trunk.Run(ctx) }()
	<-registered
	cancel() // Run unregisters, then returns
	fmt.Println(<-done, len(reg.Bindings("alice@relink.test")), "bindings")
	// Output:
	// unregistered → registering 0s
	// registering → registered 1h0m0s
	// registered → unregistered 0s
	// context canceled 0 bindings
}

func ExampleFleet() {
	reg, err := siptest.NewRegistrar(siptest.Config{Password: "secret"})
	if err != nil {
		panic(err)
	}
	defer reg.Close()
	ua, err := quietUA()
	if err != nil {
		panic(err)
	}
	defer ua.Close()

	fleet := sip.NewFleet(ua, sip.FleetConfig{})
	for i := range 100 {
		if _, err := fleet.Add(sip.TrunkConfig{
			Registrars: []string{reg.URI()},
			AOR:        fmt.Sprintf("sip:trunk%d@relink.test", i),
			Password:   "secret",
		}); err != nil {
			panic(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- fleet.Run(ctx) }()
	for fleet.Stats().Registered < 100 {
		time.Sleep(10 * time.Millisecond)
	}
	st := fleet.Stats()
	fmt.Println(st.Registered, "of", st.Trunks, "registered over", reg.Stats().Accepted, "connection")
	cancel()
	<-done
	fmt.Println(fleet.Stats().Unregistered, "unregistered,", reg.Stats().Bindings, "bindings left")
	// Output:
	// 100 of 100 registered over 1 connection
	// 100 unregistered, 0 bindings left
}

// A UA's sipgo UserAgent serves the application's own requests (calls,
// OPTIONS...): they share the flows that relink keeps alive for the trunks.
func ExampleNewUA() {
	ua, err := sip.NewUA(sip.UAConfig{
		UserTimeout: 10 * time.Second, // TCP_USER_TIMEOUT on the connections sipgo dials
		TransportLayerOptions: []sipmsg.TransportLayerOption{
			sipmsg.WithTransportLayerLogger(quiet),
		},
	})
	if err != nil {
		panic(err)
	}
	defer ua.Close()
	client, err := sipgo.NewClient(ua.UserAgent())
	if err != nil {
		panic(err)
	}
	defer client.Close()
	fmt.Println(ua.UserAgent().Name())
	// Output:
	// sipgo
}
