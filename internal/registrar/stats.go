package registrar

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
)

// Event describes one request and how the registrar answered it, for
// Config.OnRequest.
type Event struct {
	Time      time.Time
	Method    string // "REGISTER", "OPTIONS", ...
	Transport string // "TCP" or "UDP"
	Source    string // the client's host:port
	AoR       string // "user@host" from the To URI
	CallID    string
	CSeq      uint32
	Username  string // digest username; "" without credentials
	Nonce     string // digest nonce; "" without credentials
	NC        uint32 // digest nonce count; 0 without credentials or qop
	Expires   int    // expiry granted to the first Contact (s); -1 if none
	Status    int    // status code answered; 0 when dropped (silent)
	Stale     bool   // the answer was a 401/407 with stale=true
}

// Binding is one registered Contact of an AoR.
type Binding struct {
	Contact   string    // the Contact URI
	Expires   time.Time // when the binding lapses unless refreshed
	CallID    string    // Call-ID of the REGISTER that last refreshed it
	CSeq      uint32    // its CSeq
	Source    string    // the client's host:port
	Transport string    // "TCP" or "UDP"
}

// binding is a Binding with its parsed Contact URI.
type binding struct {
	Binding
	uri sipmsg.Uri
}

// AoRStats is what the registrar saw of one AoR.
type AoRStats struct {
	Requests   int       // REGISTERs received for this AoR
	CallIDs    []string  // distinct Call-IDs, in order of first use
	CSeqs      []uint32  // CSeqs in order received (the last Config.History)
	NCs        []uint32  // nonce counts of requests with credentials (last History)
	Statuses   []int     // statuses answered, in order (last History)
	OutOfOrder int       // REGISTERs whose CSeq did not exceed the previous one on the same Call-ID
	Bindings   []Binding // live bindings
}

// Stats are the registrar's counters since New.
type Stats struct {
	Registers   uint64         // REGISTERs received (silent mode included)
	Options     uint64         // OPTIONS received
	ByStatus    map[int]uint64 // answers to REGISTERs by status code
	Dropped     uint64         // requests left unanswered in silent mode
	Shed        uint64         // REGISTERs answered 503 for lack of capacity
	Stale       uint64         // 401/407 answers with stale=true
	NonceReuse  uint64         // REGISTERs accepted on a nonce with nc > 1
	OutOfOrder  uint64         // REGISTERs whose CSeq did not exceed the previous one on the same Call-ID
	Bindings    int            // live bindings
	AoRs        int            // AoRs with at least one live binding
	Pings       uint64         // CRLF keepalive pings ("\r\n\r\n") received
	Accepted    uint64         // TCP connections accepted
	Connections int            // TCP connections open now
}

// Sample is the registrar's load over one Config.SampleInterval.
type Sample struct {
	At         time.Time // start of the interval
	Registers  int       // REGISTERs received
	OK         int       // answered 2xx
	Challenged int       // answered 401 or 407
	Rejected   int       // answered 503 (capacity or overload)
	Other      int       // other answers (and drops)
	Bindings   int       // live bindings at the end of the interval
}

type counters struct {
	registers, options, dropped, shed, stale, nonceReuse, outOfOrder uint64
	pings, accepted                                                  uint64
	byStatus                                                         map[int]uint64
}

// aorState is one AoR's bindings and history.
type aorState struct {
	bindings   map[string]*binding // by Contact URI
	requests   int
	callIDs    []string
	lastCallID string
	lastCSeq   uint32
	outOfOrder int
	cseqs      []uint32
	ncs        []uint32
	statuses   []int
}

func appendBounded[T any](s []T, v T, limit int) []T {
	if len(s) >= limit {
		copy(s, s[1:])
		s = s[:len(s)-1]
	}
	return append(s, v)
}

// aorKey normalises an AoR: "sip:alice@Example.com:5060;x=y" → "alice@example.com".
func aorKey(s string) string {
	var u sipmsg.Uri
	if err := sipmsg.ParseUri(s, &u); err == nil && u.Host != "" {
		return uriKey(&u)
	}
	s = strings.TrimPrefix(strings.TrimPrefix(s, "sips:"), "sip:")
	if i := strings.IndexAny(s, ";?>"); i >= 0 {
		s = s[:i]
	}
	return strings.ToLower(s)
}

func uriKey(u *sipmsg.Uri) string {
	if u.User == "" {
		return strings.ToLower(u.Host)
	}
	return u.User + "@" + strings.ToLower(u.Host)
}

// sweepLocked removes expired bindings and nonces; the caller holds r.mu.
func (r *Registrar) sweepLocked(now time.Time) {
	for _, a := range r.aors {
		for k, b := range a.bindings {
			if !now.Before(b.Expires) {
				delete(a.bindings, k)
			}
		}
	}
	if lt := r.cfg.nonceLifetime(); lt > 0 {
		for k, n := range r.nonces {
			if now.Sub(n.issued) > lt {
				delete(r.nonces, k)
			}
		}
	}
}

func (r *Registrar) liveBindingsLocked(now time.Time) (bindings, aors int) {
	for _, a := range r.aors {
		n := 0
		for _, b := range a.bindings {
			if now.Before(b.Expires) {
				n++
			}
		}
		bindings += n
		if n > 0 {
			aors++
		}
	}
	return bindings, aors
}

// Stats returns the counters.
func (r *Registrar) Stats() Stats {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b, a := r.liveBindingsLocked(now)
	return Stats{
		Registers:   r.stats.registers,
		Options:     r.stats.options,
		ByStatus:    maps.Clone(r.stats.byStatus),
		Dropped:     r.stats.dropped,
		Shed:        r.stats.shed,
		Stale:       r.stats.stale,
		NonceReuse:  r.stats.nonceReuse,
		OutOfOrder:  r.stats.outOfOrder,
		Bindings:    b,
		AoRs:        a,
		Pings:       r.stats.pings,
		Accepted:    r.stats.accepted,
		Connections: len(r.conns),
	}
}

// Bindings returns the live bindings of aor (a SIP URI or "user@host").
func (r *Registrar) Bindings(aor string) []Binding {
	return r.AoR(aor).Bindings
}

// AoR returns what the registrar saw of aor (a SIP URI or "user@host").
func (r *Registrar) AoR(aor string) AoRStats {
	key := aorKey(aor)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.aors[key]
	if a == nil {
		return AoRStats{}
	}
	return a.snapshot(now)
}

// AoRs returns what the registrar saw of every AoR, by "user@host".
func (r *Registrar) AoRs() map[string]AoRStats {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]AoRStats, len(r.aors))
	for k, a := range r.aors {
		m[k] = a.snapshot(now)
	}
	return m
}

func (a *aorState) snapshot(now time.Time) AoRStats {
	s := AoRStats{
		Requests:   a.requests,
		CallIDs:    slices.Clone(a.callIDs),
		CSeqs:      slices.Clone(a.cseqs),
		NCs:        slices.Clone(a.ncs),
		Statuses:   slices.Clone(a.statuses),
		OutOfOrder: a.outOfOrder,
	}
	for _, b := range a.bindings {
		if now.Before(b.Expires) {
			s.Bindings = append(s.Bindings, b.Binding)
		}
	}
	sort.Slice(s.Bindings, func(i, j int) bool { return s.Bindings[i].Contact < s.Bindings[j].Contact })
	return s
}

// Samples returns the load samples taken so far, oldest first.
func (r *Registrar) Samples() []Sample {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.samples)
}

// sampler closes a Sample every interval and sweeps expired state.
func (r *Registrar) sampler(iv time.Duration) {
	defer r.serveWG.Done()
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
			r.takeSample(r.now())
		}
	}
}

func (r *Registrar) takeSample(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sweepLocked(now)
	r.cur.Bindings, _ = r.liveBindingsLocked(now)
	r.samples = appendBounded(r.samples, r.cur, r.cfg.maxSamples())
	r.cur = Sample{At: now}
}

// countLocked records the answer to a REGISTER; the caller holds r.mu.
func (r *Registrar) countLocked(status int) {
	r.stats.byStatus[status]++
	switch {
	case status >= 200 && status < 300:
		r.cur.OK++
	case status == 401 || status == 407:
		r.cur.Challenged++
	case status == 503:
		r.cur.Rejected++
	default:
		r.cur.Other++
	}
}
