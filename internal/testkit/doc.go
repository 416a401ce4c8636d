// Package testkit holds the test doubles that relink's tests, examples and
// benchmarks share, so that each is written once:
//
//   - [Echo], a TCP echo server that can freeze (a silent peer: TCP stays
//     up, nothing is read or answered) and hang (an application that reads
//     but never answers), and [EchoOnce], one round trip through it;
//   - [Registerer], a raw REGISTER client: it builds each REGISTER itself
//     (one Call-ID, CSeq counting up, digest credentials from
//     github.com/icholy/digest, either on the kept nonce with nc counting
//     up or on a fresh challenge each time as sipgo's DoDigestAuth does) and
//     sends it through a sipgo client, for the naive baselines and for tests
//     that talk SIP below relink's Trunk; [NewSipgoClient] gives it a client
//     closed with the test, and [Registerers], [RegisterAll] and
//     [RefreshParallel] are the registrar benchmarks' shared loop;
//   - [SyncBuffer], a buffer goroutines write while a test reads it, and
//     [RaiseFileLimit], for runs that open thousands of sockets.
//
// The context-aware sleep they use is internal/ctxtime.Sleep; the server
// models (token bucket, fixed window) live in internal/ratelimit.
//
//	srv, err := testkit.ListenEcho("")
//	if err != nil { ... }
//	defer srv.Close()
//	c, _ := net.Dial("tcp", srv.Addr())
//	_ = testkit.EchoOnce(c, "hello", time.Second) // echoed
//	srv.Freeze()                                   // c's peer goes silent
package testkit
