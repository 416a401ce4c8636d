package conn

import "io"

// A Prober writes one application-level ping into the stream. Any inbound
// byte that follows (the pong, or other traffic) proves the peer alive.
//
// Probe is called at most once at a time, with exclusive use of the write
// side (it never interleaves with a Write). Probe must write to w and
// return, not read from it, keep it or block on anything else: on a plain
// TCP Conn it is called from the process's probe scheduler, which serves
// every Conn. There w is a buffer whose bytes are written on the socket in
// one non-blocking write once Probe returns (the rest, if the send buffer
// is full, under a write deadline of ProbeTimeout); otherwise w is the
// underlying net.Conn, with a write deadline of ProbeTimeout, and Probe
// runs on a goroutine of its own. An error declares the flow dead, with the
// error wrapped in Err (as ErrUnresponsive when the write timed out). On a
// TLS Conn, w encrypts what Probe writes.
//
// The peer's reply arrives among the protocol's own bytes. A Prober that
// also implements ReplyFilter (CRLF does) has its replies removed by
// Conn.Read, so the reader never sees them; with any other Prober the
// reader gets them and must skip them. See ReplyFilter.
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
//
// It is a ReplyFilter: the Conn follows the inbound SIP framing (start
// line, headers up to the blank line, Content-Length bytes of body) and,
// while a ping awaits its pong, removes the run of CR and LF bytes found at
// the next message boundary (the pong, or a peer's echo of the whole ping),
// as RFC 5626 §3.5.1 reads keepalives between messages. CR and LF bytes
// inside a message, and those between messages when no ping awaits a pong
// (a peer's own ping, which the reader may answer), are left alone. A
// stream whose framing cannot be followed (a Content-Length that is not a
// number) is passed on untouched from then on.
var CRLF Prober = crlf{}

type crlf struct{}

// NewStripper returns the SIP framer that removes CRLF pongs.
func (crlf) NewStripper() Stripper { return &sipStripper{} }

var crlfPing = []byte("\r\n\r\n")

func (crlf) Probe(w io.Writer) error {
	_, err := w.Write(crlfPing)
	return err
}

// A ReplyFilter is a Prober that can tell its own replies apart from the
// protocol's bytes. When the Prober of a Conn implements it, Conn.Read
// removes the replies from the inbound bytes before returning them, so that
// the reader (a Link's Session) never sees them; they still prove the peer
// alive. CRLF implements it for SIP.
//
// A Prober that does not implement it leaves its replies in the stream: the
// reader must then accept and ignore them, as a protocol whose ping is a
// message of its own (a PING answered by a PONG) does anyway. Choose a
// probe the peer answers with bytes the reader can skip.
type ReplyFilter interface {
	Prober
	// NewStripper returns the filter of one connection's inbound stream.
	// It is called once per Conn, when the Conn is made.
	NewStripper() Stripper
}

// A Stripper removes a Prober's replies from one connection's inbound
// stream. Its state (where the protocol's message boundaries are, how many
// probes await a reply) carries over from one call to the next.
type Stripper interface {
	// Probed is called just before each probe is written, from the
	// probe's goroutine, possibly while Strip runs: a Stripper that removes
	// only the replies it expects counts them here.
	Probed()
	// Strip is given the bytes just read, in stream order; it removes the
	// probe replies among them, moving the rest to the front of p in
	// order, and returns how many bytes are left (p[:n]). It is called
	// from Conn.Read, one call at a time, and must not keep p.
	Strip(p []byte) (n int)
}
