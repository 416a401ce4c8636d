package registrar

import (
	"bytes"
	"strconv"
)

// maxHeader bounds the header bytes a framer buffers; beyond it the framer
// gives up and passes data through (sipgo will reject such a message).
const maxHeader = 64 << 10

// framer follows SIP message boundaries on a TCP stream so that keepalive
// pings (RFC 5626 §3.5.1: "\r\n\r\n" between messages) are recognised even
// when a read holds a ping and a message together. sipgo's server only
// answers a ping that arrives alone in a read, so under load (many trunks on
// one connection) it leaves coalesced pings unanswered; Kamailio answers
// them. The registrar strips the pings from the stream and answers them
// itself.
type framer struct {
	inHeaders bool   // inside a message's headers
	hdr       []byte // the current message's header bytes so far
	body      int    // body bytes of the current message still to come
	crlf      int    // CR/LF bytes seen between messages (a ping is 4)
	broken    bool   // framing lost: pass everything through
	out       []byte // reused output buffer
}

// scan consumes one read. It returns the bytes to hand to the SIP parser
// (data itself when nothing was removed) and the number of pings seen.
func (f *framer) scan(data []byte) ([]byte, int) {
	if f.broken {
		return data, 0
	}
	pings := 0
	removed := false
	f.out = f.out[:0]
	for i := 0; i < len(data); {
		switch {
		case f.body > 0:
			n := min(f.body, len(data)-i)
			f.out = append(f.out, data[i:i+n]...)
			f.body -= n
			i += n
		case f.inHeaders:
			start := len(f.hdr)
			// Append up to the end of the headers if it is in this read.
			from := max(0, start-3)
			f.hdr = append(f.hdr, data[i:]...)
			end := bytes.Index(f.hdr[from:], []byte("\r\n\r\n"))
			if end < 0 {
				f.out = append(f.out, data[i:]...)
				i = len(data)
				if len(f.hdr) > maxHeader {
					f.broken = true
				}
				continue
			}
			end += from + 4 // index in hdr just past the blank line
			used := end - start
			f.out = append(f.out, data[i:i+used]...)
			i += used
			f.body = contentLength(f.hdr[:end])
			f.hdr = f.hdr[:0]
			f.inHeaders = false
		case data[i] == '\r' || data[i] == '\n':
			// Between messages: CRLFs are keepalives, not message bytes.
			f.crlf++
			removed = true
			i++
			if f.crlf == 4 {
				pings++
				f.crlf = 0
			}
		default:
			f.inHeaders = true
			f.crlf = 0
		}
	}
	if !removed {
		return data, 0
	}
	return f.out, pings
}

// contentLength returns the Content-Length (or compact "l") of a header
// block, 0 when absent or invalid.
func contentLength(hdr []byte) int {
	for line := range bytes.SplitSeq(hdr, []byte("\r\n")) {
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := bytes.TrimSpace(line[:colon])
		if !bytes.EqualFold(name, []byte("Content-Length")) && !bytes.EqualFold(name, []byte("l")) {
			continue
		}
		n, err := strconv.Atoi(string(bytes.TrimSpace(line[colon+1:])))
		if err != nil || n < 0 {
			return 0
		}
		return min(n, 1<<24)
	}
	return 0
}
