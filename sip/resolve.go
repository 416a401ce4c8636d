package sip

// RFC 3263 for registrars given by name: SRV records for the URI's
// transport, in priority and weight order, then A/AAAA. Each address found
// is a target of its own, with its own gate (the key is transport/IP:port),
// tried in that order and failed over like the Registrars list.
//
// NAPTR (RFC 3263 §4.1) is skipped on purpose: it chooses the transport, and
// a relink trunk's transport is the one its URI names (UDP when absent), as
// a 3xx never changes it either. The SRV lookup is that of §4.1's "if no
// NAPTR records are found" case for the URI's transport.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// minLookupInterval bounds how often a trunk looks a registrar up again:
// at Run's start, then when it has gone through every target without a
// registration, at most this often.
const minLookupInterval = 30 * time.Second

// maxTargets bounds the addresses one registrar name expands to, whatever
// the DNS answers.
const maxTargets = 16

// needsLookup reports whether t names its registrar by a host name without a
// port: RFC 3263 §4.2 then asks for SRV records.
func needsLookup(t *target) bool {
	if t.uri.Port != 0 {
		return false
	}
	_, err := netip.ParseAddr(strings.Trim(t.uri.Host, "[]"))
	return err != nil
}

// srvService is the SRV service and protocol of a transport (RFC 3263 §4.2);
// ok is false for WS and WSS, which have none (RFC 7118).
func srvService(transport string) (service, proto string, ok bool) {
	switch transport {
	case "udp":
		return "sip", "udp", true
	case "tcp":
		return "sip", "tcp", true
	case "tls":
		return "sips", "tcp", true
	}
	return "", "", false
}

// lookupTargets returns the targets of a registrar given by name, in the
// order RFC 3263 tries them: its SRV records by priority, weight-shuffled
// within one (net.Resolver.LookupSRV orders them so), each record's
// addresses in turn; without SRV records, the name's own addresses at the
// transport's default port. A TLS or WSS target keeps the host name as its
// destination, so that the certificate is checked against it.
func lookupTargets(ctx context.Context, res *net.Resolver, t target) ([]target, error) {
	if res == nil {
		res = net.DefaultResolver
	}
	type hostPort struct {
		host string
		port int
	}
	var hosts []hostPort
	if svc, proto, ok := srvService(t.transport); ok {
		_, srvs, err := res.LookupSRV(ctx, svc, proto, t.uri.Host)
		var dnsErr *net.DNSError
		notFound := errors.As(err, &dnsErr) && dnsErr.IsNotFound
		if err != nil && !notFound {
			return nil, fmt.Errorf("sip: SRV lookup for %s: %w", t.raw, err)
		}
		for _, s := range srvs {
			if h := strings.TrimSuffix(s.Target, "."); h != "" && s.Port != 0 {
				hosts = append(hosts, hostPort{h, int(s.Port)})
			}
		}
	}
	if len(hosts) == 0 {
		hosts = []hostPort{{t.uri.Host, sipmsg.DefaultPort(t.transport)}}
	}
	var out []target
	for _, hp := range hosts {
		ips, err := lookupHost(ctx, res, hp.host, t.transport)
		if err != nil {
			continue // the next record may resolve
		}
		for _, ip := range ips {
			if len(out) == maxTargets {
				return out, nil
			}
			out = append(out, expanded(t, hp.host, ip, hp.port))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("sip: no address for %s", t.raw)
	}
	return out, nil
}

// lookupHost returns the addresses of host (one placeholder for TLS and
// WSS, whose destination stays the name).
func lookupHost(ctx context.Context, res *net.Resolver, host, transport string) ([]netip.Addr, error) {
	if transport == "tls" || transport == "wss" {
		return []netip.Addr{{}}, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{ip}, nil
	}
	return res.LookupNetIP(ctx, "ip", host)
}

// expanded is the target for one address of a looked-up registrar: the
// Request-URI stays the configured one; the destination and the gate key
// are the address's.
func expanded(t target, host string, ip netip.Addr, port int) target {
	dest := net.JoinHostPort(host, strconv.Itoa(port))
	if ip.IsValid() {
		dest = netip.AddrPortFrom(ip.Unmap(), uint16(port)).String()
	}
	e := t
	e.dest = dest
	e.key = t.transport + "/" + dest
	// Named as its gate is keyed, so that Fleet.Gate(Destination) finds it.
	e.raw = "sip:" + dest + ";transport=" + t.transport
	return e
}

// expand replaces the trunk's targets by what the lookup of each registrar
// given by name finds (RFC 3263), keeping the state of targets seen before
// (Call-ID, CSeq, digest, gate). A registrar whose lookup fails stays as
// configured: sipgo resolves its name when it sends.
func (t *Trunk) expand(ctx context.Context) {
	if t.lookup == nil || t.cfg.proxy != nil {
		return // requests go to the outbound proxy, whatever the registrar's name
	}
	var out []*regTarget
	changed := false
	for _, c := range t.conf {
		if !needsLookup(&c.target) {
			out = append(out, c)
			continue
		}
		found, err := t.lookup(ctx, c.target)
		if err != nil {
			t.log.LogAttrs(ctx, slog.LevelWarn, "sip registrar lookup failed",
				slog.String("registrar", c.raw), slog.String("error", err.Error()))
			out = append(out, c)
			continue
		}
		changed = true
		for _, e := range found {
			rt := t.known[e.key]
			if rt == nil {
				rt = t.newRegTarget(e, c.index)
				t.known[e.key] = rt
			}
			out = append(out, rt)
		}
	}
	if changed {
		t.tgts = out
	}
}
