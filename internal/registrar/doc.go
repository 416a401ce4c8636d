// Package registrar is an in-process SIP registrar built on sipgo, for unit
// tests and demonstrations. It is not a production registrar. Its public
// face is github.com/relinkgo/relink/sip/siptest, which wraps it for users'
// tests; this package keeps the switches relink's own tests and benchmarks
// need (faults per AoR, silence, samples, fixed windows).
//
// It listens on TCP and UDP on loopback, checks digest credentials (MD5,
// qop=auth, nonces with a lifetime, nc counting up on a reused nonce,
// stale=true for an expired nonce), keeps bindings that expire when they are
// not refreshed, answers 423 with Min-Expires, and admits at most Capacity
// REGISTERs per second, answering the excess at once with 503 and
// Retry-After. Switches force any answer (overload, 403, 404, 3xx, 6xx…) or
// silence, and counters record what clients did: REGISTERs by status,
// per-second load, live bindings, Call-IDs, CSeqs and nonce counts per AoR,
// and CRLF keepalive pings.
//
// The canonical use in a test:
//
//	reg, err := registrar.New(registrar.Config{Password: "secret", Capacity: 200})
//	if err != nil {
//		t.Fatal(err)
//	}
//	defer reg.Close()
//	// point clients at reg.URI() ("sip:127.0.0.1:PORT;transport=tcp")
//	// ...
//	reg.SetOverload(5 * time.Second) // every request now gets 503 + Retry-After: 5
//	st := reg.Stats()               // st.ByStatus[503], st.Bindings, ...
//
// AoRs are keyed as "user@host" (the To URI without scheme, port or
// parameters); methods taking an AoR accept a SIP URI as well.
package registrar
