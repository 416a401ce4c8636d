package conn

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/relinkgo/relink/internal/liveness"
)

// target is a Conn seen as its liveness monitor's Target (a conversion of
// the pointer: no allocation, and no exported method on Conn).
type target Conn

var _ liveness.TryProber = (*target)(nil)

// Probe writes one probe the way any Write goes: under the write lock, with
// a write deadline of ProbeTimeout. The monitor calls it on a goroutine of
// its own when TryProbe could not write the probe at once (TLS, a wrapped
// net.Conn, a Write in progress).
func (t *target) Probe() error { return (*Conn)(t).probe() }

// TryProbe writes one probe from the monitor's scheduler, without blocking,
// when the Conn's net.Conn is the TCP socket itself: the Prober writes into
// a scratch buffer, whose bytes go to the socket in one non-blocking write
// (no deadline to set and restore, no goroutine). It does not try (false)
// when a Write holds the write side or the net.Conn is another kind. A
// send buffer too full to take the whole probe means the flow is busy: the
// rest is written on a goroutine, as Probe would, bounded by ProbeTimeout.
func (t *target) TryProbe() (bool, error) { return (*Conn)(t).tryProbe() }

// Unread returns the bytes waiting unread in the kernel. While their
// count changes the reader is slow, not the peer gone; the monitor decides
// (an unchanged count excuses one probe only).
func (t *target) Unread() int {
	c := (*Conn)(t)
	if c.raw == nil {
		return 0
	}
	n, err := unreadBytes(c.raw)
	if err != nil {
		return 0
	}
	return n
}

// OnDead ends the Conn: the monitor declared its peer dead.
func (t *target) OnDead(err error) {
	cause, reason := error(errNoResponse), reasonUnresponsive
	if pe, ok := errors.AsType[*liveness.ProbeError](err); ok {
		cause, reason = probeFailure(pe.Err)
	}
	(*Conn)(t).die(cause, reason, true)
}

// probe writes one probe under the write lock, with a write deadline of
// ProbeTimeout.
func (c *Conn) probe() error {
	if c.lockWrite() != nil {
		return nil // dead: the cause is already recorded
	}
	defer c.unlockWrite()
	if c.broken.Load() {
		return nil
	}
	if c.strip != nil {
		c.strip.Probed() // before the reply can arrive
	}
	err := c.withProbeDeadline(func() error { return c.prober.Probe(c.nc) })
	c.probeSent(err)
	if err != nil && c.broken.Load() {
		return nil // closed meanwhile; the cause is already recorded
	}
	return err
}

// withProbeDeadline runs write with a write deadline of ProbeTimeout on the
// net.Conn, then restores the caller's deadline. The write side must be
// held.
func (c *Conn) withProbeDeadline(write func() error) error {
	c.dlmu.Lock()
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.probeTimeout))
	c.dlmu.Unlock()
	err := write()
	c.dlmu.Lock()
	_ = c.nc.SetWriteDeadline(c.wdl)
	c.dlmu.Unlock()
	return err
}

// probeBuf collects what a Prober writes, for one non-blocking write to
// the socket. They are pooled: a probe allocates nothing.
type probeBuf struct {
	b     []byte
	n     int
	errno error
	write func(fd uintptr) // pb.writeFD, made once
}

func (pb *probeBuf) Write(p []byte) (int, error) {
	pb.b = append(pb.b, p...)
	return len(p), nil
}

// maxPooledProbe is the largest probe buffer kept for reuse.
const maxPooledProbe = 4 << 10

var probeBufs = sync.Pool{New: func() any {
	pb := &probeBuf{b: make([]byte, 0, 64)}
	pb.write = pb.writeFD
	return pb
}}

// tryProbe is TryProbe.
func (c *Conn) tryProbe() (bool, error) {
	if !c.direct || !c.tryLockWrite() {
		return false, nil
	}
	if c.broken.Load() {
		c.unlockWrite()
		return true, nil // dead: the cause is already recorded
	}
	pb := probeBufs.Get().(*probeBuf)
	defer func() {
		if cap(pb.b) <= maxPooledProbe {
			probeBufs.Put(pb)
		}
	}()
	pb.b = pb.b[:0]
	if err := c.prober.Probe(pb); err != nil {
		c.unlockWrite()
		c.probeSent(err)
		return true, err
	}
	if c.strip != nil {
		c.strip.Probed() // before the reply can arrive
	}
	pb.n, pb.errno = 0, nil
	err := c.raw.Control(pb.write)
	switch {
	case err == nil && pb.errno != nil && !wouldBlock(pb.errno):
		err = c.opError("write", pb.errno)
	case err == nil && pb.n < len(pb.b):
		// The send buffer is full: finish on a goroutine, which releases
		// the write lock.
		go c.finishProbe(append([]byte(nil), pb.b[max(pb.n, 0):]...))
		return true, nil
	}
	c.unlockWrite()
	c.probeSent(err)
	if err != nil && c.broken.Load() {
		return true, nil // closed meanwhile; the cause is already recorded
	}
	return true, err
}

// finishProbe writes the rest of a probe that the socket did not take at
// once, bounded by ProbeTimeout, and releases the write lock (held by
// tryProbe for it). A failure ends the Conn as a failed probe does.
func (c *Conn) finishProbe(rest []byte) {
	err := c.withProbeDeadline(func() error {
		_, err := c.nc.Write(rest)
		return err
	})
	c.unlockWrite()
	c.probeSent(err)
	if err != nil && !c.broken.Load() {
		cause, reason := probeFailure(err)
		c.die(cause, reason, true)
	}
}

// probeSent counts a probe and logs it at Debug. No context reaches it
// (a timer sends probes).
//
//nolint:contextcheck // see above
func (c *Conn) probeSent(err error) {
	c.inst.probeSent()
	if c.log != nil && c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.LogAttrs(context.Background(), slog.LevelDebug, "conn: probe sent",
			slog.String("remote", c.nc.RemoteAddr().String()), slog.Any("error", err))
	}
}
