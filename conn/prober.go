package conn

import "io"

// A Prober writes one application-level ping into the stream. Any inbound
// byte that follows (the pong, or other traffic) proves the peer alive.
//
// Probe is called at most once at a time, with exclusive use of the write
// side (it never interleaves with a Write) and a write deadline of
// ProbeTimeout, from a timer's goroutine. w is the underlying connection:
// Probe must write to it and return, not read from it or keep it. An error
// declares the flow dead, with the error wrapped in Err (as ErrUnresponsive
// when the write timed out).
type Prober interface {
	Probe(w io.Writer) error
}

// ProberFunc adapts a function to the Prober interface.
type ProberFunc func(w io.Writer) error

// Probe calls f(w).
func (f ProberFunc) Probe(w io.Writer) error { return f(w) }

// CRLF is the SIP keepalive ping of RFC 5626 §4.4.1: it writes "\r\n\r\n",
// which a SIP peer answers with "\r\n" (and otherwise ignores between
// messages). Use it only on SIP flows (or protocols that skip blank lines).
var CRLF Prober = crlf{}

type crlf struct{}

var crlfPing = []byte("\r\n\r\n")

func (crlf) Probe(w io.Writer) error {
	_, err := w.Write(crlfPing)
	return err
}
