// Package relink keeps TCP connections and SIP trunks alive across network
// failures. It has no code of its own: it is the overview of its packages.
//
//   - backoff: retry-delay policies with jitter (cenkalti/backoff/v4
//     compatible), and the Gate, which admits the reconnects and
//     re-registrations of a whole process towards one server at the pace the
//     server can serve, follows its push-back, and scouts while it is
//     unreachable.
//   - conn: a net.Conn that detects a silent peer within a bound (15 s by
//     default, idle or busy), and a Link that dials, runs the user's session
//     on each connection, and redials through the Gate.
//   - sip: SIP trunk registration on sipgo, with digest auth, refresh,
//     keepalive on the flow, re-registration when the flow dies, the RFCs'
//     answers to 401/403/423/503, failover, and a Fleet of trunks sharing one
//     Gate per registrar.
//
// The canonical composition, a gateway with many trunks:
//
//	ua, err := sip.NewUA(sip.UAConfig{}) // sipgo UA with relink's flow liveness
//	if err != nil {
//		return err
//	}
//	defer ua.Close()
//	fleet := sip.NewFleet(ua, sip.FleetConfig{}) // one adaptive Gate per registrar
//	for _, a := range accounts {
//		if _, err := fleet.Add(sip.TrunkConfig{
//			Registrars: []string{"sip:pbx.example.com;transport=tcp"},
//			AOR:        "sip:" + a.User + "@example.com",
//			Password:   a.Password,
//		}); err != nil {
//			return err
//		}
//	}
//	return fleet.Run(ctx) // until ctx ends; then every trunk unregisters
//
// And a plain TCP client that must never keep a dead connection:
//
//	link, err := conn.NewLink(conn.LinkConfig{
//		Dialer:  &conn.Dialer{Config: conn.Config{Probe: myPing}},
//		Addrs:   []string{"primary:7000", "backup:7000"},
//		Gate:    backoff.NewGate(backoff.GateConfig{Destination: "primary:7000"}),
//		Session: func(ctx context.Context, c *conn.Conn) error { return serve(ctx, c) },
//	})
//	if err != nil {
//		return err
//	}
//	return link.Run(ctx)
package relink
