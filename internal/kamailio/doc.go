// Package kamailio starts a real Kamailio registrar (Debian's kamailio 5.6)
// for integration tests and benchmarks: on loopback or inside a network
// namespace, on a free port, from an embedded configuration, with its own
// runtime directory and control socket so that kamcmd switches work.
//
// In a test:
//
//	kamailio.Require(t) // skip (or fail with RELINK_REQUIRE_KAMAILIO=1) without kamailio
//	k := kamailio.Start(t, kamailio.Options{Password: "secret", Rate: 200})
//	// register trunks at k.URI() ("sip:127.0.0.1:PORT;transport=tcp") as any user, password "secret"
//	k.SetOverload(5 * time.Second) // every REGISTER now gets 503 + Retry-After: 5
//	st, _ := k.Stats()            // st.Registers, st.Overload, st.Shed, st.Contacts, ...
//
// Outside tests (a benchmark program), Launch starts it and Stop ends it.
//
// The configuration (testdata/kamailio.cfg.tmpl) loads tm, sl, pv, usrloc
// (memory only), registrar (423 for a too short expiry), auth (digest
// checked against one password with pv_auth_check, qop=auth, nonce counts),
// htable (runtime switches and counters) and ctl (kamcmd). It listens on UDP
// and TCP, answers CRLF pings (tcp_crlf_ping; off with NoCRLFAnswer) and
// keeps idle TCP connections for tcp_connection_lifetime (an hour by
// default).
//
// Options.TLS adds a TLS listener (tls module) with a server certificate
// signed by a CA the instance makes (Instance.CA: CA().Pool() for the
// clients' RootCAs, CA().Issue for client certificates, required with
// RequireClientCert); Options.WebSocket adds WS on a TCP port and, with
// TLS, WSS on a TLS port (xhttp + websocket modules). Their addresses and
// URIs: TLSAddr/TLSURI, WSAddr/WSURI, WSSAddr/WSSURI.
package kamailio
