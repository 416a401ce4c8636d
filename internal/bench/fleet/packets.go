package main

import (
	"bytes"
	"encoding/binary"
)

// registerLine starts a REGISTER request (the request line of RFC 3261,
// with a sip: Request-URI).
var registerLine = []byte("REGISTER sip:")

// registers counts the REGISTER requests that start in an IPv4 packet's TCP
// payload to port: each segment may carry several (a burst coalesced by the
// sender or by GRO). Anything else (IPv6, UDP, a truncated header) counts 0.
func registers(pkt []byte, port int) int {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[9] != 6 /* TCP */ {
		return 0
	}
	ihl := int(pkt[0]&0x0f) * 4
	if ihl < 20 || len(pkt) < ihl+20 {
		return 0
	}
	tcp := pkt[ihl:]
	if int(binary.BigEndian.Uint16(tcp[2:4])) != port {
		return 0
	}
	off := int(tcp[12]>>4) * 4
	if off < 20 || len(tcp) < off {
		return 0
	}
	return bytes.Count(tcp[off:], registerLine)
}
