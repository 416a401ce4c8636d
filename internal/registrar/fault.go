package registrar

import (
	"bytes"
	"net"
	"strconv"
	"sync"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// Fault is a forced answer that replaces normal processing, to test how
// clients handle responses: 503 (overload), 403, 404, 500, 3xx, 6xx...
type Fault struct {
	// Code is the status code to answer. Zero clears the fault.
	Code int
	// Reason is the reason phrase. Zero means the standard one.
	Reason string
	// RetryAfter, when positive, adds Retry-After (rounded up to whole
	// seconds). Zero or negative: no header.
	RetryAfter time.Duration
	// Contact, for 3xx, is the URI put in the Contact header
	// (e.g. another registrar's URI).
	Contact string
	// Headers are appended verbatim (e.g. a Retry-After with a comment).
	Headers []sipmsg.Header
	// Times, when positive, limits the fault to that many requests; it
	// then clears itself. Zero means until cleared.
	Times int
}

type faultState struct {
	Fault
	left int // requests left when Times > 0
}

// SetFault makes the registrar answer every request (REGISTER, OPTIONS and
// others), before authentication and capacity, with f. A zero Code clears it.
func (r *Registrar) SetFault(f Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.Code == 0 {
		r.fault = nil
		return
	}
	r.fault = &faultState{Fault: f, left: f.Times}
}

// SetAoRFault is SetFault for the requests of one AoR only (its To URI).
// A per-AoR fault wins over the global one.
func (r *Registrar) SetAoRFault(aor string, f Fault) {
	key := aorKey(aor)
	r.mu.Lock()
	defer r.mu.Unlock()
	if f.Code == 0 {
		delete(r.aorFaults, key)
		return
	}
	r.aorFaults[key] = &faultState{Fault: f, left: f.Times}
}

// ClearFaults removes the global and every per-AoR fault.
func (r *Registrar) ClearFaults() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fault = nil
	clear(r.aorFaults)
}

// SetOverload answers every request with 503 and Retry-After (none when
// retryAfter ≤ 0) until ClearOverload or ClearFaults.
func (r *Registrar) SetOverload(retryAfter time.Duration) {
	r.SetFault(Fault{Code: sipmsg.StatusServiceUnavailable, Reason: "Overloaded", RetryAfter: retryAfter})
}

// ClearOverload clears the global fault (whatever it is).
func (r *Registrar) ClearOverload() { r.SetFault(Fault{}) }

// takeFault returns the fault that applies to a request for aor, consuming
// one use of it; the caller holds r.mu.
func (r *Registrar) takeFaultLocked(aor string) *Fault {
	if fs, ok := r.aorFaults[aor]; ok && aor != "" {
		f := fs.Fault
		if fs.Times > 0 {
			if fs.left--; fs.left <= 0 {
				delete(r.aorFaults, aor)
			}
		}
		return &f
	}
	if fs := r.fault; fs != nil {
		f := fs.Fault
		if fs.Times > 0 {
			if fs.left--; fs.left <= 0 {
				r.fault = nil
			}
		}
		return &f
	}
	return nil
}

// faultResponse builds the response of a fault.
func faultResponse(req *sipmsg.Request, f *Fault) *sipmsg.Response {
	reason := f.Reason
	if reason == "" {
		reason = reasonPhrase(f.Code)
	}
	res := sipmsg.NewResponseFromRequest(req, f.Code, reason, nil)
	if f.RetryAfter > 0 {
		res.AppendHeader(sipmsg.NewHeader("Retry-After", strconv.Itoa(ceilSeconds(f.RetryAfter))))
	}
	if f.Contact != "" {
		res.AppendHeader(sipmsg.NewHeader("Contact", "<"+f.Contact+">"))
	}
	for _, h := range f.Headers {
		res.AppendHeader(h)
	}
	return res
}

func reasonPhrase(code int) string {
	switch code {
	case 200:
		return "OK"
	case 301:
		return "Moved Permanently"
	case 302:
		return "Moved Temporarily"
	case 305:
		return "Use Proxy"
	case 400:
		return "Bad Request"
	case 401:
		return "Unauthorized"
	case 403:
		return "Forbidden"
	case 404:
		return "Not Found"
	case 405:
		return "Method Not Allowed"
	case 407:
		return "Proxy Authentication Required"
	case 408:
		return "Request Timeout"
	case 423:
		return "Interval Too Brief"
	case 480:
		return "Temporarily Unavailable"
	case 500:
		return "Server Internal Error"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Server Time-out"
	case 600:
		return "Busy Everywhere"
	case 603:
		return "Decline"
	case 604:
		return "Does Not Exist Anywhere"
	}
	switch {
	case code < 200:
		return "Trying"
	case code < 300:
		return "OK"
	case code < 400:
		return "Redirect"
	case code < 500:
		return "Client Error"
	case code < 600:
		return "Server Error"
	}
	return "Global Failure"
}

// readFilter sees every chunk read from a connection before sipgo parses
// it. On TCP it finds keepalive pings with the connection's framer (also
// those sharing a read with a message, which sipgo would leave unanswered),
// removes them from the stream, counts them and answers each with a pong
// unless the registrar is silent.
func (r *Registrar) readFilter(props sipmsg.TransportReadProps, data []byte) ([]byte, error) {
	if props.Transport != "TCP" || props.RemoteAddr == nil {
		return data, nil
	}
	r.mu.Lock()
	tc := r.byRemote[props.RemoteAddr.String()]
	r.mu.Unlock()
	if tc == nil {
		return data, nil
	}
	out, pings := tc.framer.scan(data) // only this connection's reader calls it
	if pings > 0 {
		r.mu.Lock()
		r.stats.pings += uint64(pings)
		r.mu.Unlock()
		if !r.silent.Load() {
			if _, err := tc.Conn.Write(bytes.Repeat([]byte("\r\n"), pings)); err != nil {
				return nil, err
			}
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// trackingListener records accepted TCP connections so that Stats can count
// them and CloseConnections can close them.
type trackingListener struct {
	net.Listener
	r *Registrar
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, r: l.r}
	l.r.mu.Lock()
	if l.r.closed {
		l.r.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	l.r.conns[tc] = struct{}{}
	l.r.byRemote[c.RemoteAddr().String()] = tc
	l.r.stats.accepted++
	l.r.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	r      *Registrar
	once   sync.Once
	framer framer // used by the connection's reader only
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.r.mu.Lock()
		delete(c.r.conns, c)
		if k := c.RemoteAddr().String(); c.r.byRemote[k] == c {
			delete(c.r.byRemote, k)
		}
		c.r.mu.Unlock()
	})
	return err
}
