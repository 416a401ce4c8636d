package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/sip"
)

// password is every trunk's digest password (the registrars accept it for
// every user).
const password = "secret"

// client is the measured process: one sip.Fleet and the Links, plus what
// they saw during the current fault.
type client struct {
	o      *options
	ua     *sip.UA
	fleet  *sip.Fleet
	trunks []*sip.Trunk
	index  map[*sip.Trunk]int
	aors   []string
	links  *linkSet
	stopF  context.CancelFunc
	fleetD chan error

	mu          sync.Mutex
	win         window
	tLost       []time.Time // per trunk: first left Registered within the window
	tBack       []time.Time // per trunk: last entered Registered
	falseDeaths int
	flowDeaths  int
	stopping    bool
}

// window is the current fault's, as the client knows it: deaths of the
// units it affects between cut and clear + grace are expected.
type window struct {
	cut, clear time.Time
	sip, links bool
	grace      time.Duration
}

// expects reports whether a death of a unit of that kind at at belongs to
// the fault.
func (w *window) expects(links bool, at time.Time) bool {
	if w.cut.IsZero() || at.Before(w.cut) || (links && !w.links) || (!links && !w.sip) {
		return false
	}
	return w.clear.IsZero() || !at.After(w.clear.Add(w.grace))
}

// runClient is the -role client process: it starts the fleet and the
// Links, says ready, and answers commands until its stdin closes.
func runClient(o *options, in io.Reader, out io.Writer) error {
	if o.pprof != "" {
		// Finer than the default 512 KiB, so that a diff of two heap
		// profiles names what grew.
		runtime.MemProfileRate = 4096
	}
	c := &client{o: o, index: map[*sip.Trunk]int{}, tLost: make([]time.Time, o.trunks), tBack: make([]time.Time, o.trunks)}
	enc := json.NewEncoder(out)
	ctx := context.Background()
	if err := c.start(ctx); err != nil {
		_ = enc.Encode(reply{Err: err.Error()})
		c.stop()
		return err
	}
	if err := enc.Encode(c.status()); err != nil {
		return err
	}
	dec := json.NewDecoder(bufio.NewReader(in))
	for {
		var cmd command
		if err := dec.Decode(&cmd); err != nil {
			c.stop()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := enc.Encode(c.do(cmd)); err != nil {
			return err
		}
	}
}

// do answers one command.
func (c *client) do(cmd command) reply {
	switch cmd.Op {
	case "cut":
		c.mu.Lock()
		c.win = window{cut: time.Now(), sip: cmd.SIP, links: cmd.Links, grace: c.o.bound() + 2*time.Second}
		clear(c.tLost)
		c.mu.Unlock()
		c.links.cut(c.win)
		return reply{}
	case "clear":
		c.mu.Lock()
		c.win.clear = time.Now()
		w := c.win
		c.mu.Unlock()
		c.links.cut(w)
		return reply{}
	case "status":
		return c.status()
	case "sample":
		m, err := sampleMem(c.o.pprof, cmd.Profile)
		r := c.status()
		r.Mem = &m
		if err != nil {
			r.Err = err.Error()
		}
		return r
	case "registered":
		var r reply
		for i, t := range c.trunks {
			if t.State() == sip.Registered {
				r.Trunks = append(r.Trunks, i)
			}
		}
		return r
	case "stop":
		return c.stop()
	}
	return reply{Err: fmt.Sprintf("unknown op %q", cmd.Op)}
}

// start runs the fleet and the Links and waits until every trunk is
// registered and every Link ready.
func (c *client) start(ctx context.Context) error {
	ua, err := sip.NewUA(sip.UAConfig{OnFlowDeath: c.onFlowDeath})
	if err != nil {
		return err
	}
	c.ua = ua
	c.fleet = sip.NewFleet(ua, sip.FleetConfig{Logger: c.o.logger, OnStateChange: c.onTrunk})
	for i := range c.o.trunks {
		aor := aorOf(i)
		t, err := c.fleet.Add(sip.TrunkConfig{
			Registrars: []string{c.o.sipURI}, AOR: aor, Password: password, Expires: c.o.expires,
			KeepAlive: c.o.keepAlive, KeepAliveTimeout: c.o.timeout, RequestTimeout: 5 * time.Second,
		})
		if err != nil {
			return err
		}
		c.trunks, c.aors, c.index[t] = append(c.trunks, t), append(c.aors, aor), i
	}
	fctx, cancel := context.WithCancel(ctx)
	c.stopF, c.fleetD = cancel, make(chan error, 1)
	go func() { c.fleetD <- c.fleet.Run(fctx) }()
	if c.links, err = startLinks(ctx, c.o); err != nil {
		return err
	}
	deadline := time.Now().Add(c.o.startCap)
	for {
		r := c.status()
		if r.Registered == c.o.trunks && r.Ready == c.o.links {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("start: %d of %d trunks registered, %d of %d Links ready after %v",
				r.Registered, c.o.trunks, r.Ready, c.o.links, c.o.startCap)
		}
		ctxtime.Sleep(ctx, 100*time.Millisecond)
	}
}

func (c *client) onFlowDeath(d sip.FlowDeath) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping {
		return
	}
	c.flowDeaths++
	if !c.win.expects(false, d.At) {
		c.o.logger.Warn("soak: false flow death", "at", d.At, "remote", d.Remote, "err", d.Err)
		c.falseDeaths++
	}
}

func (c *client) onTrunk(ch sip.TrunkStateChange) {
	i, ok := c.index[ch.Trunk]
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.From == sip.Registered && ch.To != sip.Registered && c.tLost[i].IsZero() && c.win.expects(false, ch.At) {
		c.tLost[i] = ch.At
	}
	if ch.To == sip.Registered {
		c.tBack[i] = ch.At
	}
}

// status counts registered trunks, ready Links and the units recovered from
// the current fault: an affected one must have left and come back since the
// cut, any other only be registered (ready).
func (c *client) status() reply {
	r := reply{Total: c.o.trunks + c.o.links}
	c.mu.Lock()
	w := c.win
	var last time.Time
	for i, t := range c.trunks {
		if t.State() != sip.Registered {
			continue
		}
		r.Registered++
		if !w.sip {
			r.Recovered++
			continue
		}
		if lost, back := c.tLost[i], c.tBack[i]; !lost.IsZero() && back.After(lost) {
			r.Recovered++
			last = later(last, back)
		}
	}
	r.FalseDeaths, r.FlowDeaths = c.falseDeaths, c.flowDeaths
	c.mu.Unlock()
	if c.links != nil {
		ready, recovered, lback, falseN := c.links.status()
		r.Ready, r.Recovered, last = ready, r.Recovered+recovered, later(last, lback)
		r.FalseDeaths += falseN
	}
	if !last.IsZero() {
		r.LastBack = last.UnixNano()
	}
	return r
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// stop ends the Links and the fleet (which unregisters every trunk) and
// closes the UA; stuck counts the units whose Run did not return in time.
func (c *client) stop() reply {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	var r reply
	if c.links != nil {
		r.Stuck += c.links.stop(10 * time.Second)
	}
	if c.stopF != nil {
		c.stopF()
		t := time.NewTimer(30 * time.Second)
		select {
		case err := <-c.fleetD:
			if err != nil && !errors.Is(err, context.Canceled) {
				r.Note = "fleet: " + err.Error()
			}
		case <-t.C:
			r.Stuck += c.o.trunks
			r.Note = "fleet Run did not return 30 s after the stop"
		}
		t.Stop()
		c.stopF = nil
	}
	if c.ua != nil {
		_ = c.ua.Close()
		c.ua = nil
	}
	return r
}

// sampleMem collects garbage and reads what the process holds, writing
// heap and goroutine profiles named name into dir when both are set.
func sampleMem(dir, name string) (memSample, error) {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := memSample{Heap: ms.HeapInuse + ms.StackInuse, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, HeapAlloc: ms.HeapAlloc,
		Goroutines: runtime.NumGoroutine(), FDs: openFDs()}
	if dir == "" || name == "" {
		return m, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return m, err
	}
	for _, p := range []struct {
		name, file string
		debug      int
	}{{"heap", name + "-heap.pb.gz", 0}, {"goroutine", name + "-goroutine.txt", 1}} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			return m, err
		}
		err = pprof.Lookup(p.name).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return m, err
		}
	}
	return m, nil
}

// openFDs counts the process's open file descriptors (-1 where
// /proc/self/fd cannot be read).
func openFDs() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es) - 1 // the directory's own descriptor
}

// quietLogger is the client's logger: relink's warnings and errors to
// stderr, sipgo's default logger silenced below errors + 4 (it logs every
// failed read).
func quietLogger(verbose bool) *slog.Logger {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 4})))
	if !verbose {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
