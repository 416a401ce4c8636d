package main

import (
	"encoding/binary"
	"testing"
)

// tcpPacket builds an IPv4 packet carrying payload in a TCP segment to port.
func tcpPacket(port int, payload string) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45 // version 4, 5 words
	ip[9] = 6    // TCP
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:2], 40000)
	binary.BigEndian.PutUint16(tcp[2:4], uint16(port))
	tcp[12] = 5 << 4
	return append(append(ip, tcp...), payload...)
}

func TestRegisters(t *testing.T) {
	reg := "REGISTER sip:198.18.0.1:5060;transport=tcp SIP/2.0\r\nVia: x\r\n\r\n"
	for name, c := range map[string]struct {
		pkt  []byte
		want int
	}{
		"one":           {tcpPacket(5060, reg), 1},
		"two coalesced": {tcpPacket(5060, reg+reg), 2},
		"other port":    {tcpPacket(5061, reg), 0},
		"a response":    {tcpPacket(5060, "SIP/2.0 200 OK\r\n\r\n"), 0},
		"an OPTIONS":    {tcpPacket(5060, "OPTIONS sip:x SIP/2.0\r\n\r\n"), 0},
		"no payload":    {tcpPacket(5060, ""), 0},
		"empty":         {nil, 0},
		"short ip":      {tcpPacket(5060, reg)[:19], 0},
		"short tcp":     {tcpPacket(5060, reg)[:30], 0},
		"ipv6":          {append([]byte{0x60}, tcpPacket(5060, reg)[1:]...), 0},
		"udp":           {func() []byte { p := tcpPacket(5060, reg); p[9] = 17; return p }(), 0},
		"bad ihl":       {func() []byte { p := tcpPacket(5060, reg); p[0] = 0x41; return p }(), 0},
		"bad offset":    {func() []byte { p := tcpPacket(5060, reg); p[32] = 0xf0; return p[:50] }(), 0},
	} {
		if got := registers(c.pkt, 5060); got != c.want {
			t.Errorf("%s: %d REGISTERs, want %d", name, got, c.want)
		}
	}
}

// FuzzRegisters: any bytes off the wire are counted without a panic, and
// never more REGISTERs than fit in them.
func FuzzRegisters(f *testing.F) {
	f.Add(tcpPacket(5060, "REGISTER sip:a SIP/2.0\r\n\r\nREGISTER sip:b SIP/2.0\r\n\r\n"))
	f.Add(tcpPacket(5060, "SIP/2.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n"))
	f.Add([]byte{0x4f, 0, 0, 0, 0, 0, 0, 0, 0, 6})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		if n := registers(pkt, 5060); n < 0 || n > len(pkt)/len(registerLine) {
			t.Fatalf("%d REGISTERs in %d bytes", n, len(pkt))
		}
	})
}
