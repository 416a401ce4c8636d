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

// Strip implements Stripper.
func (s *sipStripper) Strip(p []byte) int {
	if s.lost {
		return len(p)
	}
	w := 0
	for i := 0; i < len(p); i++ {
		b := p[i]
		switch s.state {
		case sipBoundary:
			if b == '\r' || b == '\n' {
				if s.removing || s.pending.Load() > 0 {
					s.removing = true
					s.pending.Store(0) // every ping sent so far is answered
					continue
				}
				break
			}
			s.removing = false
			s.state, s.lineLen, s.clen = sipHeaders, 0, 0
			s.header(b)
		case sipHeaders:
			s.header(b)
		case sipBody:
			// Skip the rest of the body at once.
			n := int64(len(p) - i)
			if n > s.body {
				n = s.body
			}
			copy(p[w:], p[i:i+int(n)])
			w += int(n)
			i += int(n) - 1
			s.body -= n
			if s.body == 0 {
				s.state = sipBoundary
			}
			continue
		}
		if s.lost {
			// Framing lost at this byte: keep it and all that follows.
			w += copy(p[w:], p[i:])
			return w
		}
		p[w] = b
		w++
	}
	return w
}

// header takes one byte of the start line or a header line.
func (s *sipStripper) header(b byte) {
	if b != '\n' {
		if s.lineLen < sipLineMax {
			s.line[s.lineLen] = b
		}
		s.lineLen++
		return
	}
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
