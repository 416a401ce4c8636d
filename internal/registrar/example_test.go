package registrar_test

import (
	"context"
	"fmt"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/registrar"
)

// A registrar with digest authentication and a capacity, and a raw sipgo
// client registering against it.
func ExampleNew() {
	reg, err := registrar.New(registrar.Config{Password: "secret", Capacity: 200})
	if err != nil {
		panic(err)
	}
	defer reg.Close()

	ua, _ := sipgo.NewUA()
	defer ua.Close()
	client, _ := sipgo.NewClient(ua)

	var recipient sipmsg.Uri
	sipmsg.ParseUri(reg.URI(), &recipient)
	aor := sipmsg.Uri{Scheme: "sip", User: "alice", Host: "relink.test"}
	req := sipmsg.NewRequest(sipmsg.REGISTER, recipient)
	req.AppendHeader(&sipmsg.FromHeader{Address: aor, Params: sipmsg.HeaderParams{{K: "tag", V: "1"}}})
	req.AppendHeader(&sipmsg.ToHeader{Address: aor})
	req.AppendHeader(&sipmsg.ContactHeader{Address: sipmsg.Uri{Scheme: "sip", User: "alice", Host: "127.0.0.1", Port: 5999}})
	req.AppendHeader(sipmsg.NewHeader("Expires", "600"))
	req.SetBody(nil)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := client.Do(ctx, req)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.StatusCode)
	res, err = client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: "alice", Password: "secret"})
	if err != nil {
		panic(err)
	}
	fmt.Println(res.StatusCode, res.Contact().Params.GetOr("expires", ""))

	st := reg.Stats()
	fmt.Println(st.Registers, st.Bindings, len(reg.Bindings("sip:alice@relink.test")))
	// Output:
	// 401
	// 200 600
	// 2 1 1
}
