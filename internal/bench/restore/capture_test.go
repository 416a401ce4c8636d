package main

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/netns"
)

const testPort = 5060

var testClient = netip.MustParseAddr("198.18.0.2")

// frame builds an Ethernet + IPv4 + TCP frame.
func frame(src, dst netip.Addr, sport, dport uint16, flags byte, payload string) []byte {
	b := make([]byte, ethHeaderLen+20+20+len(payload))
	binary.BigEndian.PutUint16(b[12:14], ethTypeIPv4)
	ip := b[ethHeaderLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+20+len(payload)))
	ip[9] = protoTCP
	s, d := src.As4(), dst.As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:2], sport)
	binary.BigEndian.PutUint16(tcp[2:4], dport)
	tcp[12] = 5 << 4
	tcp[13] = flags
	copy(tcp[20:], payload)
	return b
}

const register = "REGISTER sip:198.18.0.1:5060;transport=tcp SIP/2.0\r\n" +
	"Via: SIP/2.0/TCP 198.18.0.2:40000;branch=z9hG4bK.1\r\n" +
	"From: <sip:t7@relink.test>;tag=abc\r\n" +
	"To: <sip:t7@relink.test>\r\n" +
	"Call-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"

func TestParsePacket(t *testing.T) {
	server := netns.ServerIP
	for name, tc := range map[string]struct {
		frame []byte
		ok    bool
		want  packetInfo
	}{
		"register": {frame(testClient, server, 40000, testPort, tcpFlagACK, register), true,
			packetInfo{clientPort: 40000, users: []string{"t7"}}},
		"after CRLF keepalive": {frame(testClient, server, 40000, testPort, tcpFlagACK, "\r\n\r\n"+register), true,
			packetInfo{clientPort: 40000, users: []string{"t7"}}},
		"two, compact From": {frame(testClient, server, 40000, testPort, tcpFlagACK,
			register+"REGISTER sip:x SIP/2.0\r\nf: \"A\" <sips:alice@example.com>\r\n\r\n"), true,
			packetInfo{clientPort: 40000, users: []string{"t7", "alice"}}},
		"no From": {frame(testClient, server, 40000, testPort, tcpFlagACK, "REGISTER sip:x SIP/2.0\r\nTo: <sip:a@b>\r\n\r\n"), true,
			packetInfo{clientPort: 40000, users: []string{""}}},
		"in a header value": {frame(testClient, server, 40000, testPort, tcpFlagACK, "OPTIONS sip:x SIP/2.0\r\nSubject: REGISTER sip:x\r\n\r\n"), true,
			packetInfo{clientPort: 40000}},
		"syn-ack": {frame(server, testClient, testPort, 40000, tcpFlagSYN|tcpFlagACK, ""), true,
			packetInfo{clientPort: 40000, synAck: true}},
		"server data": {frame(server, testClient, testPort, 40000, tcpFlagACK, "SIP/2.0 200 OK\r\n\r\n"), true,
			packetInfo{clientPort: 40000}},
		"other port":   {frame(testClient, server, 40000, 5061, tcpFlagACK, register), false, packetInfo{}},
		"other host":   {frame(testClient, testClient, 40000, testPort, tcpFlagACK, register), false, packetInfo{}},
		"truncated":    {frame(testClient, server, 40000, testPort, tcpFlagACK, register)[:30], false, packetInfo{}},
		"not ethernet": {[]byte("REGISTER sip:x SIP/2.0\r\nFrom: <sip:t1@x>\r\n\r\n"), false, packetInfo{}},
	} {
		got, ok := parsePacket(tc.frame, server, testPort)
		if ok != tc.ok || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: got %+v, %v; want %+v, %v", name, got, ok, tc.want, tc.ok)
		}
	}
}

// A capture keeps, per user, the first REGISTER on a connection accepted
// after the restore: not one retransmitted on an old connection, not one
// sent before.
func TestFirstRegisters(t *testing.T) {
	c := &capture{server: netns.ServerIP, port: testPort}
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	reg := func(port uint16, user string) []byte {
		return frame(testClient, netns.ServerIP, port, testPort, tcpFlagACK,
			"REGISTER sip:x SIP/2.0\r\nFrom: <sip:"+user+"@x>\r\n\r\n")
	}
	synAck := func(port uint16) []byte {
		return frame(netns.ServerIP, testClient, testPort, port, tcpFlagSYN|tcpFlagACK, "")
	}
	c.handle(reg(1, "a"), at(-500))    // in the hole
	c.handle(reg(2, "a"), at(100))     // retransmitted on an old connection
	c.handle(synAck(3), at(900))       // accepted after the restore
	c.handle(reg(3, "a"), at(901))     // the first that counts
	c.handle(reg(3, "a"), at(950))     // a second one
	c.handle(reg(2, "b"), at(1000))    // old connection only
	c.handle(synAck(4), at(-100))      // accepted before the restore
	c.handle(reg(4, "c"), at(1100))    // on a connection of before
	c.handle([]byte("junk"), at(1200)) // ignored
	got := c.firstRegisters(t0)
	want := map[string]time.Time{"a": at(901)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("first REGISTERs %v, want %v", got, want)
	}
	if n := c.registersSince(t0); n != 5 {
		t.Errorf("%d REGISTERs since the restore, want 5", n)
	}
	if c.frames != 9 {
		t.Errorf("%d frames, want 9", c.frames)
	}
}

func TestQuantiles(t *testing.T) {
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(100 - i)
	}
	if p50, p99, mx := quantiles(xs); p50 != 50 || p99 != 99 || mx != 100 {
		t.Errorf("quantiles = %v, %v, %v; want 50, 99, 100", p50, p99, mx)
	}
	if p50, p99, mx := quantiles([]float64{2}); p50 != 2 || p99 != 2 || mx != 2 {
		t.Errorf("one sample: %v %v %v", p50, p99, mx)
	}
	if p50, p99, mx := quantiles(nil); p50 != 0 || p99 != 0 || mx != 0 {
		t.Errorf("none: %v %v %v", p50, p99, mx)
	}
}

// The capture parses a client's bytes: nothing it receives may crash it.
func FuzzParsePacket(f *testing.F) {
	f.Add(frame(testClient, netns.ServerIP, 40000, testPort, tcpFlagACK, register))
	f.Add(frame(netns.ServerIP, testClient, testPort, 40000, tcpFlagSYN|tcpFlagACK, ""))
	f.Fuzz(func(t *testing.T, b []byte) {
		pi, ok := parsePacket(b, netns.ServerIP, testPort)
		if !ok && (pi.synAck || len(pi.users) > 0) {
			t.Errorf("not ok but %+v", pi)
		}
		for _, u := range pi.users {
			if len(u) > 128 {
				t.Errorf("user of %d bytes", len(u))
			}
		}
	})
}
