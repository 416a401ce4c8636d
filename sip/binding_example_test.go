package sip_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/relinkgo/relink/sip"
	"github.com/relinkgo/relink/sip/siptest"
)

// A gateway maps inbound requests to its trunks by the Contact each one
// registered: with RFC 5626 outbound (the default) it stays the same for the
// trunk's life, across reconnects.
func ExampleTrunk_Binding() {
	reg, err := siptest.NewRegistrar(siptest.Config{})
	if err != nil {
		panic(err)
	}
	defer reg.Close()
	ua, err := quietUA()
	if err != nil {
		panic(err)
	}
	defer ua.Close()
	trunk, err := sip.NewTrunk(ua, sip.TrunkConfig{Registrars: []string{reg.URI()}, AOR: "sip:alice@relink.test"})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- trunk.Run(ctx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	for s := trunk.State(); s != sip.Registered && trunk.WaitForStateChange(wctx, s); s = trunk.State() {
	}
	wcancel()
	b, ok := trunk.Binding()
	fmt.Println(ok, b.Expires, b.RegID, b.InstanceID == ua.InstanceID(), strings.HasSuffix(b.Contact, ";transport=tcp;ob"))
	cancel()
	<-done
	_, ok = trunk.Binding()
	fmt.Println(ok)
	// Output:
	// true 1h0m0s 1 true true
	// false
}
