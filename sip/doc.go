// Package sip keeps SIP trunks registered on a sipgo UserAgent, through
// outages, overloads and half-open TCP connections.
//
// A Trunk registers one address-of-record with a registrar (or an ordered
// list of them), refreshes the binding before it expires, watches the TCP or
// TLS flow it registered over with CRLF pings (RFC 5626), and re-registers
// when the flow dies or a refresh fails — through the registrar's
// backoff.Gate, so that a thousand trunks recovering at once reach the
// registrar at the pace it can serve. A Fleet runs many trunks on one UA
// with one Gate per registrar address. A UA (NewUA) is a sipgo UserAgent
// with relink's flow monitor; its UserAgent method gives the sipgo
// UserAgent for calls. Package sip/siptest has an in-process registrar for
// tests.
//
// This package's name clashes with sipgo's github.com/emiago/sipgo/sip;
// relink imports that one as sipmsg, and so do its examples.
//
// The canonical composition:
//
//	import (
//		"github.com/relinkgo/relink/sip"
//	)
//
//	ua, err := sip.NewUA(sip.UAConfig{}) // sipgo UA + relink's flow monitor
//	if err != nil { ... }
//	defer ua.Close()
//	fleet := sip.NewFleet(ua, sip.FleetConfig{}) // one Gate per registrar address
//	for _, acct := range accounts {
//		fleet.Add(sip.TrunkConfig{
//			Registrars: []string{"sip:pbx.example.com;transport=tcp"},
//			AOR:        "sip:" + acct.User + "@example.com",
//			Password:   acct.Password,
//		})
//	}
//	err = fleet.Run(ctx) // until ctx ends; then every trunk unregisters,
//	// at the registrar's pace, and the fleet's gates are closed
//
// A trunk with a primary and a backup registrar takes them both in
// Registrars and gets one gate per address from its Fleet (or a private one
// each). A Gate set in TrunkConfig.Gate guards one destination, so NewTrunk
// refuses it with more than one registrar.
//
// # Configuration
//
// In TrunkConfig, as in every relink Config, a zero field means the default
// documented on it and a negative one turns the feature off: Expires < 0
// sends no Expires (the registrar chooses), KeepAlive or KeepAliveTimeout
// < 0 no CRLF ping, Qualify < 0 no OPTIONS, UnregisterTimeout < 0 no
// unregistration, SlowRetry < 0 no retry after a refusal, FailbackInterval
// < 0 no failback, RequestTimeout < 0 sipgo's own timers only, RegID < 0
// no RFC 5626 outbound.
//
// # Responses
//
// decide (decide.go) is the whole response handling: a pure function from
// the exchange so far and one transaction's reply (a response, a timeout, a
// transport error, a dead flow) to the next action and the outcome to
// report to the gate; decide_test.go tables every class. The runner
// (runner.go) performs the actions: Run's loop, refresh, keepalive, flow
// loss, failback and shutdown; flow deaths reach it as events it takes on
// its own goroutine. send.go builds and sends the REGISTERs, options.go the
// OPTIONS, outbound.go adds RFC 5626's parameters, resolve.go looks
// registrars up (RFC 3263) and binding.go keeps what the 2xx granted.
//
// Every REGISTER transaction is admitted by the registrar's gate and reports
// its outcome to it (a challenge round trip is two admissions: registrars
// count REGISTERs). So is the unregistration on exit: a Fleet that stops
// unregisters every trunk at once, and its herd drains at the pace the
// registrar serves. UnregisterTimeout bounds it by progress, not by a fixed
// deadline: a trunk gives up when the registrar has served nobody through
// its gate for that long (a silent registrar costs one bound, a herd of N
// trunks about N ÷ the registrar's rate), or at once when a 503's
// Retry-After is longer than the bound (logged at Warn); 12 bounds (1 min
// by default), or the binding's end, cap it. When Run returns, the gates a
// Fleet (or a Trunk) made are closed: a fleetgate member leaves Redis at
// once. Gates the application passed in are left alone.
// 401/407 are answered once, and the challenge is kept: the next refresh
// carries credentials with nc counting up, so a refresh is one transaction,
// not two (sipgo's own helper re-challenges every time). A challenge with
// stale=true is answered again. Credentials rejected (a 401 to credentials
// computed from a fresh challenge), 403, 404, other 4xx, 6xx and a TLS
// handshake that fails after the TCP connect (ErrTLSConfig: an untrusted
// certificate, a plain TCP port) put the trunk in Failed and it retries
// after TrunkConfig.SlowRetry. A 3xx is never followed to a weaker
// transport, and a host it names gets no credentials unless
// TrunkConfig.RedirectCredentials (ErrRedirectRefused). 423 is retried at
// once with Min-Expires (twice the interval without one). 408, timeouts,
// transport errors and dead flows are reported to the gate as Unreachable:
// the gate closes and sends one scout at a time, so no trunk sleeps in a long
// private backoff when the path comes back; the trunk moves on to its next
// registrar if it has one. 500, 502 and 504 wait for the trunk's Backoff
// policy, then the gate, and stay with the registrar. 503 with Retry-After
// pauses the registrar's gate for every trunk that shares it (RFC 3261
// §21.5.4); 503 without it waits for the Backoff policy first; either moves
// the trunk on to its next registrar if it has one. 3xx is followed to its
// first Contact (at most 3 in a row). A grant shorter than asked is obeyed,
// and our Contact's expires parameter wins over the Expires header; a 2xx
// that does not list our Contact made no binding and is retried like a 5xx
// (the trunk's Backoff policy, then the gate). Values
// from the registrar are parsed defensively and clamped (parse.go): a
// Retry-After of 10^12 s pauses for MaxRetryAfter (5 min); a refresh that
// cannot be sent before its binding ends gives the binding up
// (ErrBindingExpired) and moves on to the next registrar.
//
// # Flow liveness, and why it is driven by sipgo's read filter
//
// sipgo v1.7.3 never notices a silent TCP connection: it sends no keepalive,
// sets no read timeout, and keeps the dead connection in its pool, where the
// next request reuses it. relink fixes this from the outside, per
// connection (one ping per connection, however many trunks share it):
//
//   - The pong must be observed. sipgo's only dialing hook,
//     TransportTCP.DialerCreate, is func(laddr net.Addr) net.Dialer: it
//     returns a net.Dialer value, so relink cannot hand sipgo a wrapped
//     net.Conn (conn.Conn) that would see the bytes. Instead NewUA installs a
//     TransportLayerReadFilter, which sipgo calls on every read of every
//     connection (transport_tcp.go, readConnection) before it answers or
//     swallows keepalives: relink marks the flow alive there (a map lookup
//     and an atomic store, no allocation). The option must come before
//     WithTransportLayerTransports, which copies the filter into the
//     transports it installs — given after, it never reaches them.
//   - The ping is written by relink on the pooled connection
//     (TransportLayer().Pool("tcp"), the *sipmsg.TCPConnection, whose Write
//     is atomic with respect to sipgo's own message writes), after
//     KeepAlive of inbound silence, by the liveness state machine of
//     internal/liveness, which conn uses too.
//   - Kernel options (UAConfig.KeepAlive and UserTimeout, applied as
//     conn.Config.NetDialer does) reach sipgo through DialerCreate: TCP
//     keepalive and TCP_USER_TIMEOUT bound detection even without pings.
//   - When no pong arrives within KeepAliveTimeout the flow is dead: it is
//     evicted from sipgo's pool (ConnectionPool.CloseAndDelete, which removes
//     it only if the pool still maps the address to it, and closes it), so
//     that no request reuses it; closing it ends sipgo's reader, which with
//     WithTransactionLayerTerminateOnConnClose (set by NewUA) fails the
//     transactions pending on it at once; and every trunk on it re-registers
//     through the gate on a new connection.
//   - A flow whose peer resets it (RST) or closes it (FIN) is dead at once,
//     not at its next probe: sipgo's reader sees the reset or the EOF first
//     but drops the connection without a word, so on Linux relink asks the
//     kernel. One epoll instance per UserAgent (one goroutine, made with
//     the first flow) holds a duplicate of each flow's TCP socket for
//     EPOLLRDHUP, EPOLLHUP and EPOLLERR: the peer's FIN or RST, read
//     without taking a byte from sipgo's reader. The duplicate keeps the
//     socket from being closed (and its event lost) under the watch; it is
//     closed when the flow dies or is retired. Elsewhere, the probe notices
//     that the connection left sipgo's pool.
//
// A UserAgent not made by NewUA still works through WrapUA: relink cannot
// see its reads, so it probes each flow with an OPTIONS request instead
// (any answer proves the flow alive).
//
// # Every transport is a flow
//
// Every stream transport is a flow: TCP, TLS, WS and WSS connections are
// dialled by relink (WSS: kernel options set once a trunk uses it), probed
// with a CRLF ping (an OPTIONS goes with it until the peer has answered one;
// a peer that never answers CRLF is probed with OPTIONS only), and evicted
// from sipgo's pool when they die; UDP registrations are qualified with
// OPTIONS and their failure is a flow death too. UAConfig.OnFlowDeath
// reports each death; UAConfig.WatchCalls extends the watch to the
// application's own connections. TLS: UAConfig.TLSConfig for the UA,
// TrunkConfig.TLSConfig per trunk; verification is never turned off.
//
// A UDP registrar is qualified by default: an OPTIONS every DefaultQualify
// (30 s) while registered, answered by anything; no answer within the
// qualify timeout (KeepAliveTimeout, 5 s by default, not the 32 s of Timer F:
// sipgo retransmits the OPTIONS meanwhile) declares the UDP flow dead for
// every trunk that registered with that registrar. A silent UDP registrar is
// thus noticed within Qualify + the qualify timeout, 35 s by default.
//
// # Waits nobody watches
//
// No REGISTER or OPTIONS waits on a connection nobody watches: each connects
// through relink (every attempt bounded by UAConfig.ConnectTimeout and
// redialled with a fresh SYN rather than left to the kernel's next SYN
// retransmission, up to 31 s later; after an attempt whose connect timed
// out, a bare TCP connect probes the path every 100 ms and a lost attempt
// is redialled as soon as one gets through, so a restored path is reached
// within about 100 ms), also when the Contact is configured or kept and no
// connection is asked for before the request; the transaction's flow is
// subscribed to while it waits (TCP, TLS, WS, WSS: pinged; UDP: killed by
// its trunks' failed qualify), so the flow's death ends the wait at once;
// the qualify OPTIONS waits the short qualify timeout. What is left is
// bounded by RequestTimeout: a UDP REGISTER to a silent registrar, and a
// trunk whose KeepAlive is off (it asked for no pings).
//
// # RFC 5626 outbound and the binding
//
// Unless TrunkConfig.RegID is negative, every REGISTER carries the UA's
// +sip.instance (UA.InstanceID: UAConfig.InstanceID, or a URN made once per
// UA), a reg-id per configured registrar (RegID, RegID+1, ...), ;ob in the
// Contact URI and Supported: outbound, path. The Contact relink builds is
// made once per transport and kept for the trunk's life: it no longer
// changes with each reconnect's ephemeral port, the registrar replaces the
// binding instead of adding one, and a gateway can map the Request-URI of an
// inbound request to its trunk (Trunk.Binding().Contact). Trunk.Binding
// reads what the registrar's last 2xx granted: the registrar, Contact,
// instance and reg-id, the grant and when, and the Path and Service-Route
// values. With outbound off the Contact follows the connection, and the
// old one is removed in the same REGISTER, as before.
//
// # Carrier trunks without REGISTER
//
// TrunkConfig.OptionsOnly makes a trunk for a carrier that authenticates by
// IP: it sends OPTIONS at Qualify (DefaultQualify by default) through the
// same gates and flows, and has the same states: Registered while any final
// response comes back, Backoff after a 503 (its Retry-After pauses the gate
// for every trunk on the registrar) or no answer (the gate closes and
// scouts; the trunk moves on to its next registrar and fails back).
//
// # Outbound proxy and headers
//
// TrunkConfig.OutboundProxy sends every REGISTER and OPTIONS to the proxy's
// address over its transport, with a loose Route to it; the Request-URI stays
// the registrar's, and so does the gate. TrunkConfig.Headers adds headers
// (User-Agent, X-...) to every REGISTER and OPTIONS; NewTrunk refuses those
// relink sets itself.
//
// # Registrars by name (RFC 3263)
//
// A registrar URI whose host is a name and that has no port is looked up
// when Run starts, with TrunkConfig.Resolver (net.DefaultResolver when
// nil): the SRV records of its transport (_sip._udp, _sip._tcp or
// _sips._tcp; none for WS and WSS), in priority order and weight-shuffled
// within a priority, then each record's A/AAAA addresses; without SRV
// records, the name's own addresses at the transport's default port. Each
// address becomes a target of its own, with its own gate (a Fleet's, keyed
// transport/IP:port) and its own Call-ID, tried in that order and failed
// over and back (FailbackInterval) exactly like the Registrars list; the
// Request-URI stays the configured name. A TLS or WSS target keeps the SRV
// target's host name as its destination, so that the certificate is
// checked against it. The names are looked up again after a pass through
// every target without a registration (at most every 30 s). NAPTR is not
// queried: it would choose the transport, and a trunk's transport is the one
// its URI names (UDP when absent), as a 3xx never changes it either. A
// failed lookup leaves the URI to sipgo's own resolution, and so does an
// OutboundProxy (requests go to the proxy; no lookup of the registrar).
//
// # Telemetry
//
// With the providers given in the configs (or the otel globals), under the
// scope ScopeName:
//
//   - relink.sip.registrations ({registration}, UpDownCounter): running
//     trunks by relink.sip.state;
//   - relink.sip.register.duration (s, histogram): REGISTER round trips, by
//     server.address and network.transport;
//   - relink.sip.responses ({response}): final responses by
//     sip.response.status_class, and transactions without one by error.type
//     ("timeout", or the transport error's type as internal/neterr names it
//     for conn too: "connection_refused", "connection_reset", "eof", ...);
//   - relink.sip.recoveries ({recovery}): registrations regained after being
//     lost;
//   - relink.sip.flow.failures ({flow}): dead flows seen by trunks;
//   - a span "sip.register" per registration attempt (one gate admission:
//     the REGISTER and its challenge, 423 and 3xx follow-ups).
//
// Logs (slog, TrunkConfig.Logger) never contain a password or an
// Authorization header.
package sip
