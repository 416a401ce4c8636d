package conn

import (
	"bytes"
	"strconv"
	"sync/atomic"
)

// sipStripper is CRLF's Stripper: it follows the inbound SIP framing and,
// while a ping awaits its pong, removes the run of CR and LF bytes at the
// next message boundary.
type sipStripper struct {
	pending atomic.Int32 // pings written whose pong has not been removed

	state    int   // where the next byte falls: sipBoundary, sipHeaders, sipBody
	removing bool  // inside a run of CR/LF being removed (it may span reads)
	body     int64 // body bytes left (sipBody)
	clen     int64 // the message's Content-Length, once its header was read
	lost     bool  // framing lost: remove nothing more

	line    [sipLineMax]byte // the start of the current header line
	lineLen int              // bytes of the line seen (may exceed sipLineMax)
}

const (
	sipBoundary = iota // between messages: CR/LF here are keepalives
	sipHeaders         // in the start line or the headers
	sipBody            // in the body
)

// sipLineMax is how much of a header line is kept: enough for a
// Content-Length header with any sane value.
const sipLineMax = 64

func (s *sipStripper) Probed() { s.pending.Add(1) }

// Strip implements Stripper. It works a run of bytes at a time (a header
// line up to its LF, a body), so that it costs little more than a copy.
func (s *sipStripper) Strip(p []byte) int {
	if s.lost {
		return len(p)
	}
	w := 0
	for i := 0; i < len(p); {
		var n int // bytes of p[i:] taken, all kept
		switch s.state {
		case sipBoundary:
			if b := p[i]; b == '\r' || b == '\n' {
				if s.removing || s.pending.Load() > 0 {
					s.removing = true
					s.pending.Store(0) // every ping sent so far is answered
					i++
					continue
				}
				n = 1
				break
			}
			s.removing = false
			s.state, s.lineLen, s.clen = sipHeaders, 0, 0
			continue
		case sipHeaders:
			n = s.headers(p[i:])
		case sipBody:
			n = int(min(int64(len(p)-i), s.body))
			s.body -= int64(n)
			if s.body == 0 {
				s.state = sipBoundary
			}
		}
		if s.lost {
			n = len(p) - i // framing lost: keep all that follows
		}
		if w != i {
			copy(p[w:], p[i:i+n])
		}
		w += n
		i += n
	}
	return w
}

// headers takes the bytes of the start line and headers at the front of q,
// up to and including the end of one line, and returns how many it took.
func (s *sipStripper) headers(q []byte) int {
	j := bytes.IndexByte(q, '\n')
	if j < 0 {
		j = len(q)
	}
	if s.lineLen < sipLineMax {
		copy(s.line[s.lineLen:], q[:j])
	}
	s.lineLen += j
	if j == len(q) {
		return j
	}
	s.endLine()
	return j + 1
}

// endLine handles the end of a start line or header line: the blank line
// ends the headers; a Content-Length header gives the body's size.
func (s *sipStripper) endLine() {
	cut := s.lineLen > sipLineMax
	line := bytes.TrimSuffix(s.line[:min(s.lineLen, sipLineMax)], []byte("\r"))
	s.lineLen = 0
	if len(line) == 0 { // the blank line: the body follows
		s.body = s.clen
		s.state = sipBody
		if s.body == 0 {
			s.state = sipBoundary
		}
		return
	}
	name, value, ok := bytes.Cut(line, []byte(":"))
	if !ok || line[0] == ' ' || line[0] == '\t' {
		return // the start line, or a folded continuation
	}
	name = bytes.TrimRight(name, " \t")
	if !bytes.EqualFold(name, []byte("Content-Length")) && !bytes.EqualFold(name, []byte("l")) {
		return
	}
	v, err := strconv.ParseInt(string(bytes.TrimSpace(value)), 10, 64)
	if err != nil || v < 0 || cut {
		s.lost = true
		return
	}
	s.clen = v
}
