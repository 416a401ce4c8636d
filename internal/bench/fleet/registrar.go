package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/registrar"
)

// site is where one herd runs: a registrar limited to C REGISTER/s counted
// per 100 ms window, a path to it that can be black-holed, and where the
// worker processes run.
type site interface {
	// kind is the JSON's registrar field: "kamailio" or "embedded".
	kind() string
	// addr is the registrar's host:port, as the workers dial it (TCP).
	addr() string
	// limit sets the capacity: C REGISTER/s per 100 ms windows, 503 with
	// Retry-After beyond.
	limit(c float64) error
	// hole cuts the path silently; restore brings it back.
	hole() error
	restore() error
	// shed is the 503s the capacity limit sent so far.
	shed() (int, error)
	// arrivals returns the REGISTERs the registrar received at or after
	// since, in order of arrival.
	arrivals(since time.Time) []time.Time
	// command returns the command that runs a worker where the trunks live.
	command(exe string, args []string) *exec.Cmd
	close()
}

// embedded is the in-process registrar (internal/registrar, the one behind
// sip/siptest), on loopback: the black hole is its silent mode (it answers
// nothing, keepalive pings included, its connections staying open), and the
// restore closes the connections it accepted (the path's middleboxes forgot
// them) and answers again. A request it swallowed while silent is never
// answered, unlike a segment a black hole dropped (TCP sends it again after
// the restore): closing the connections ends those transactions at once.
type embedded struct {
	r *registrar.Registrar

	mu    sync.Mutex
	at    []time.Time
	nShed int
}

func newEmbedded(retryAfter time.Duration) (*embedded, error) {
	e := &embedded{}
	r, err := registrar.New(registrar.Config{
		Password:       "secret",
		Window:         100 * time.Millisecond,
		RetryAfter:     retryAfter,
		SampleInterval: -1,
		Logger:         slog.New(slog.DiscardHandler),
		OnRequest:      e.seen,
	})
	if err != nil {
		return nil, err
	}
	e.r = r
	return e, nil
}

// seen records each REGISTER the registrar answered (those it swallowed
// while silent have Status 0).
func (e *embedded) seen(ev registrar.Event) {
	if ev.Method != "REGISTER" || ev.Status == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.at = append(e.at, ev.Time)
	if ev.Status == 503 {
		e.nShed++
	}
}

func (e *embedded) kind() string { return "embedded" }

func (e *embedded) addr() string { return e.r.Addr() }

func (e *embedded) limit(c float64) error {
	e.r.SetCapacity(c)
	return nil
}

func (e *embedded) hole() error {
	e.r.SetSilent(true)
	return nil
}

func (e *embedded) restore() error {
	e.r.SetSilent(false)
	e.r.CloseConnections()
	return nil
}

func (e *embedded) shed() (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nShed, nil
}

func (e *embedded) arrivals(since time.Time) []time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return after(e.at, since)
}

func (e *embedded) command(exe string, args []string) *exec.Cmd { return exec.Command(exe, args...) }

func (e *embedded) close() { _ = e.r.Close() }

// after returns the times of at (in order of arrival, nearly sorted) at or
// after since, sorted.
func after(at []time.Time, since time.Time) []time.Time {
	var out []time.Time
	for _, t := range at {
		if !t.Before(since) {
			out = append(out, t)
		}
	}
	sortTimes(out)
	return out
}

// kam is Kamailio in the server namespace of a netns.Pair, the workers in the
// client namespace: the black hole is nft DROP of the SIP port both ways (no
// FIN, no RST, no ICMP), and the REGISTERs are counted as they arrive on
// the server namespace's interface.
type kam struct {
	pair *netns.Pair
	k    *kamailio.Instance
	port int
	sn   *sniffer
	undo func() error
}

// kamPort is Kamailio's port in its own namespace.
const kamPort = 5060

func newKamailio(pair *netns.Pair, retryAfter time.Duration) (*kam, error) {
	ra := retryAfter
	if ra <= 0 {
		ra = -1
	}
	k, err := kamailio.Launch(context.Background(), kamailio.Options{
		Addr:         net.JoinHostPort(netns.ServerIP.String(), strconv.Itoa(kamPort)),
		Netns:        pair.Server().Name(),
		RetryAfter:   ra,
		TCPLifetime:  time.Hour,
		Children:     4,
		StartTimeout: 20 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	sn, err := sniff(pair.Server(), kamPort)
	if err != nil {
		_ = k.Stop()
		return nil, err
	}
	return &kam{pair: pair, k: k, port: kamPort, sn: sn}, nil
}

func (s *kam) kind() string { return "kamailio" }

func (s *kam) addr() string { return s.k.Addr() }

func (s *kam) limit(c float64) error {
	if err := s.k.ResetStats(); err != nil {
		return err
	}
	return s.k.SetRate(c)
}

func (s *kam) hole() error {
	undo, err := s.pair.BlackHole(s.port)
	if err != nil {
		return err
	}
	s.undo = undo
	return nil
}

func (s *kam) restore() error {
	if s.undo == nil {
		return errors.New("restore without a hole")
	}
	err := s.undo()
	s.undo = nil
	return err
}

func (s *kam) shed() (int, error) {
	st, err := s.k.Stats()
	if err != nil {
		return 0, err
	}
	return st.Shed, nil
}

func (s *kam) arrivals(since time.Time) []time.Time { return s.sn.since(since) }

func (s *kam) command(exe string, args []string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", s.pair.Client().Name(), exe}, args...)...)
}

func (s *kam) close() {
	if s.undo != nil {
		_ = s.undo()
	}
	s.sn.close()
	if err := s.k.Stop(); err != nil {
		fmt.Println("fleet: kamailio:", err)
	}
}
