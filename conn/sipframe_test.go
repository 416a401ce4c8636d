package conn

import (
	"bytes"
	"testing"
)

// stripAll feeds in to a fresh sipStripper in chunks of size chunk (all at
// once when chunk ≤ 0), calling Probed before the chunks listed in probes,
// and returns what the reader gets.
func stripAll(in []byte, chunk int, probes map[int]bool) []byte {
	s := &sipStripper{}
	var out []byte
	for k := 0; len(in) > 0; k++ {
		n := len(in)
		if chunk > 0 {
			n = min(chunk, n)
		}
		if probes[k] {
			s.Probed()
		}
		p := bytes.Clone(in[:n])
		out = append(out, p[:s.Strip(p)]...)
		in = in[n:]
	}
	return out
}

func TestSIPStripper(t *testing.T) {
	const reg = "REGISTER sip:r SIP/2.0\r\nVia: x\r\nContent-Length: 0\r\n\r\n"
	const ok = "SIP/2.0 200 OK\r\nl: 4\r\n\r\n\r\n\r\n"
	for _, tc := range []struct {
		name   string
		in     string
		probes map[int]bool
		want   string
	}{
		{"no probe: keepalives between messages pass", "\r\n" + reg + "\r\n\r\n" + reg, nil, "\r\n" + reg + "\r\n\r\n" + reg},
		{"pong removed", "\r\n" + reg, map[int]bool{0: true}, reg},
		{"echoed ping removed", "\r\n\r\n" + reg, map[int]bool{0: true}, reg},
		{"pong after a message removed", reg + "\r\n" + reg, map[int]bool{0: true}, reg + reg},
		{"CRLF body kept, pong after it removed", ok + "\r\n", map[int]bool{0: true}, ok},
		{"only the first run after the probe", "\r\n" + reg + "\r\n" + reg, map[int]bool{0: true}, reg + "\r\n" + reg},
		{"compact and spaced Content-Length", "SIP/2.0 200 OK\r\nCONTENT-LENGTH  :  2\r\n\r\n\r\n\r\n", map[int]bool{0: true}, "SIP/2.0 200 OK\r\nCONTENT-LENGTH  :  2\r\n\r\n\r\n"},
		{"bad Content-Length: untouched from then on", "X\r\nl: x\r\n\r\n\r\n", map[int]bool{0: true}, "X\r\nl: x\r\n\r\n\r\n"},
		{"negative Content-Length: untouched", "X\r\nl: -1\r\n\r\n\r\n", map[int]bool{0: true}, "X\r\nl: -1\r\n\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{0, 1, 2, 3, 7} {
				probes := tc.probes
				if chunk > 0 && probes[0] {
					probes = map[int]bool{0: true} // before the first chunk
				}
				if got := string(stripAll([]byte(tc.in), chunk, probes)); got != tc.want {
					t.Errorf("chunks of %d: got %q, want %q", chunk, got, tc.want)
				}
			}
		})
	}
}

// FuzzSIPStripper: whatever the peer sends, the stripper only ever removes
// CR and LF bytes, removes none without a probe, never panics, and gives
// the same result however the stream is cut into reads.
func FuzzSIPStripper(f *testing.F) {
	f.Add([]byte("\r\nSIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabc\r\n"), uint8(3), true)
	f.Add([]byte("INVITE sip:x SIP/2.0\r\nl: 99999999999999999999\r\n\r\n"), uint8(1), true)
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, probe bool) {
		var probes map[int]bool
		if probe {
			probes = map[int]bool{0: true}
		}
		whole := stripAll(in, 0, probes)
		if got := stripAll(in, int(chunk), probes); !bytes.Equal(got, whole) {
			t.Fatalf("in chunks of %d: %q, at once: %q", chunk, got, whole)
		}
		if !probe && !bytes.Equal(whole, in) {
			t.Fatalf("without a probe: %q, want the input %q", whole, in)
		}
		// whole is in with some CR/LF removed.
		j := 0
		for _, b := range in {
			if j < len(whole) && whole[j] == b {
				j++
			} else if b != '\r' && b != '\n' {
				t.Fatalf("removed %q from %q: got %q", b, in, whole)
			}
		}
		if j != len(whole) {
			t.Fatalf("%q is not %q with CR/LF removed", whole, in)
		}
	})
}
