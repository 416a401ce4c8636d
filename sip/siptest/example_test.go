package siptest_test

import (
	"context"
	"fmt"

	"github.com/relinkgo/relink/sip"
	"github.com/relinkgo/relink/sip/siptest"
)

// A registrar with digest authentication and a capacity of 200 REGISTERs per
// second; point trunks at its URI.
func ExampleNewRegistrar() {
	srv, err := siptest.NewRegistrar(siptest.Config{Password: "secret", Capacity: 200})
	if err != nil {
		panic(err)
	}
	defer srv.Close()
	fmt.Println(srv.Realm(), len(srv.Bindings("sip:alice@relink.test")), srv.Stats().Registers)
	// Output:
	// relink.test 0 0
}

// A trunk registers with the registrar; the test then inspects the binding.
func ExampleRegistrar_Bindings() {
	srv, err := siptest.NewRegistrar(siptest.Config{Password: "secret"})
	if err != nil {
		panic(err)
	}
	defer srv.Close()

	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		panic(err)
	}
	defer ua.Close()
	trunk, err := sip.NewTrunk(ua, sip.TrunkConfig{
		Registrars: []string{srv.URI()},
		AOR:        "sip:alice@relink.test",
		Password:   "secret",
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- trunk.Run(ctx) }()
	for trunk.State() != sip.Registered {
		trunk.WaitForStateChange(ctx, trunk.State())
	}
	b := srv.Bindings("sip:alice@relink.test")
	fmt.Println(len(b), b[0].Transport, srv.Stats().ByStatus[401], "challenge")
	cancel() // the trunk unregisters
	<-done
	fmt.Println(len(srv.Bindings("sip:alice@relink.test")))
	// Output:
	// 1 TCP 1 challenge
	// 0
}
