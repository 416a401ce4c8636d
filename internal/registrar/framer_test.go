package registrar

import (
	"bytes"
	"strings"
	"testing"
)

const testMsg = "REGISTER sip:r SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 6\r\n\r\n\r\n\r\nab"

// feed scans the chunks and returns what reaches the parser and the pings.
func feed(chunks ...string) (string, int) {
	var f framer
	var out strings.Builder
	pings := 0
	for _, c := range chunks {
		o, p := f.scan([]byte(c))
		out.Write(o)
		pings += p
	}
	return out.String(), pings
}

func TestFramer(t *testing.T) {
	// The body of testMsg starts with CRLFCRLF: it must not count as a ping.
	for _, tc := range []struct {
		name   string
		chunks []string
		out    string
		pings  int
	}{
		{"ping alone", []string{"\r\n\r\n"}, "", 1},
		{"two pings", []string{"\r\n\r\n\r\n\r\n"}, "", 2},
		{"ping split", []string{"\r\n", "\r\n"}, "", 1},
		{"message", []string{testMsg}, testMsg, 0},
		{"ping then message", []string{"\r\n\r\n" + testMsg}, testMsg, 1},
		{"message then ping", []string{testMsg + "\r\n\r\n"}, testMsg, 1},
		{"message split in headers end", []string{testMsg[:60], testMsg[60:] + "\r\n\r\n"}, testMsg, 1},
		{"split inside blank line", []string{testMsg[:strings.Index(testMsg, "\r\n\r\n")+2], testMsg[strings.Index(testMsg, "\r\n\r\n")+2:]}, testMsg, 0},
		{"body split", []string{testMsg[:len(testMsg)-3], testMsg[len(testMsg)-3:], "\r\n\r\n"}, testMsg, 1},
		{"two messages and pings", []string{testMsg + "\r\n\r\n" + testMsg, "\r\n\r\n"}, testMsg + testMsg, 2},
		{"compact content length", []string{"OPTIONS sip:r SIP/2.0\r\nl: 2\r\n\r\nxy\r\n\r\n"}, "OPTIONS sip:r SIP/2.0\r\nl: 2\r\n\r\nxy", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, pings := feed(tc.chunks...)
			if out != tc.out || pings != tc.pings {
				t.Errorf("got %q, %d pings; want %q, %d", out, pings, tc.out, tc.pings)
			}
		})
	}
}

// Any split of a stream of messages and pings gives the same messages and
// pings.
func FuzzFramer(f *testing.F) {
	f.Add([]byte("\r\n\r\n"+testMsg+"\r\n\r\n"+testMsg), uint8(7))
	f.Add([]byte(testMsg), uint8(1))
	f.Add([]byte("\r\n\r\nX\r\nContent-Length: -5\r\n\r\n"), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		whole, wp := feed(string(data))
		var f framer
		var out bytes.Buffer
		pings := 0
		n := int(step)%16 + 1
		for i := 0; i < len(data); i += n {
			o, p := f.scan(data[i:min(i+n, len(data))])
			out.Write(o)
			pings += p
		}
		if len(whole) > len(data) {
			t.Fatalf("output longer than input")
		}
		if out.String() != whole || pings != wp {
			t.Fatalf("split by %d: %q %d pings, whole: %q %d pings", n, out.String(), pings, whole, wp)
		}
	})
}

// Peer credentials never panic the parser; what it accepts is complete.
func FuzzParseCredentials(f *testing.F) {
	f.Add(`Digest username="alice", realm="relink.test", nonce="abc", uri="sip:r", response="0123", qop=auth, nc=00000001, cnonce="x", algorithm=MD5`)
	f.Add(`Digest username="a\"b", realm="r", nonce="n", uri="u", response="r"`)
	f.Add(`Digest username=alice,realm=r,nonce=n,uri=u,response=r,qop=auth,nc=ffffffff,cnonce=c`)
	f.Add(`Digest realm="unterminated`)
	f.Add(`Basic YWxpY2U6c2VjcmV0`)
	f.Fuzz(func(t *testing.T, h string) {
		c, err := parseCredentials(h)
		if err != nil {
			return
		}
		if c.username == "" || c.nonce == "" || c.uri == "" || c.response == "" {
			t.Fatalf("accepted incomplete credentials %+v", c)
		}
		if c.qop != "" && (c.nc == 0 || c.cnonce == "") {
			t.Fatalf("qop without nc/cnonce: %+v", c)
		}
	})
}

// Expiry values from peers are clamped, never negative, never a panic.
func FuzzParseDelta(f *testing.F) {
	for _, s := range []string{"3600", " 60 ", "", "-1", "99999999999999999999", "1e3", "0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := parseDelta(s)
		if ok && (n < 0 || n > 1<<32-1) {
			t.Fatalf("parseDelta(%q) = %d", s, n)
		}
	})
}
