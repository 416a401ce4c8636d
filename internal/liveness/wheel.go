package liveness

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// DefaultTick is the tick of Default: a Monitor on it is due up to 10 ms
// after its exact time.
const DefaultTick = 10 * time.Millisecond

// wheelSlots is the number of slots of a Wheel: with DefaultTick, one turn
// is 10.24 s, longer than the default ProbeInterval, so that a Monitor
// at the defaults is visited once per due time. A Monitor due further ahead
// stays in its slot and is looked at once per turn.
const wheelSlots = 1024

// Wheel is a hashed timing wheel that schedules many Monitors on one
// goroutine: each Monitor is in the slot of the tick it is next due at
// (rounded up), and the goroutine sleeps until the next tick whose slot is
// not empty. Re-arming after inbound traffic costs nothing (Seen only
// stores a timestamp; a Monitor found not yet due is moved to its new
// slot), a due Monitor costs one step of its state machine and, if a probe
// is due, the Target's TryProbe on that goroutine (or a goroutine of its
// own for a Probe that may block), and OnDead runs on a goroutine of its
// own. The goroutine starts with the first Monitor and ends when the last
// one stops or dies; a stopped Monitor leaves its slot when the slot comes
// round (within one turn). Safe for concurrent use.
type Wheel struct {
	clk  clock
	tick int64         // ns
	wake chan struct{} // new earliest due time, or no Monitor left

	mu      sync.Mutex
	slots   [wheelSlots]*Monitor
	used    [wheelSlots / 64]uint64 // bit s: slots[s] != nil
	cur     int64                   // the next tick to look at
	sleep   int64                   // the tick the goroutine sleeps until (MinInt64: busy)
	live    int                     // Monitors started, not yet done
	running bool                    // the goroutine runs
}

// NewWheel returns a Wheel with the given tick (at least 1 ms). Its
// goroutine runs only while Monitors are on it.
func NewWheel(tick time.Duration) *Wheel {
	w := &Wheel{tick: int64(max(tick, time.Millisecond)), wake: make(chan struct{}, 1), sleep: math.MaxInt64}
	w.clk = clock{base: time.Now(), wheel: w}
	return w
}

var defaultWheel = sync.OnceValue(func() *Wheel { return NewWheel(DefaultTick) })

// bubbleYearEnd: time.Now inside a testing/synctest bubble starts at
// 2000-01-01 00:00 UTC.
var bubbleYearEnd = time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)

// Default returns the process's Wheel, tick DefaultTick. It returns nil
// (schedule on runtime timers) when time.Now reads before 2001: inside a
// testing/synctest bubble, whose fake clock starts in 2000 and whose
// timers and goroutines cannot be shared with the rest of the process (a
// host whose clock was never set gets runtime timers too: they work the
// same, at a higher cost).
func Default() *Wheel {
	if time.Now().Before(bubbleYearEnd) {
		return nil
	}
	return defaultWheel()
}

func (c *clock) now() int64 { return int64(time.Since(c.base)) }

// add puts a new Monitor on the wheel, due at due (ns since base).
func (w *Wheel) add(m *Monitor, due int64) {
	w.mu.Lock()
	w.live++
	w.insertLocked(m, due)
	start := !w.running
	w.running = true
	w.mu.Unlock()
	if start {
		go w.run()
	}
}

// release counts a Monitor that became done; the last one ends the
// goroutine.
func (w *Wheel) release() {
	w.mu.Lock()
	w.live--
	last := w.live == 0
	w.mu.Unlock()
	if last {
		w.signal()
	}
}

func (w *Wheel) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// insertLocked puts m in the slot of the first tick at or after due (ns),
// and not before the next tick to be looked at. w.mu must be held.
func (w *Wheel) insertLocked(m *Monitor, due int64) {
	t := max((max(due, 0)+w.tick-1)/w.tick, w.cur)
	m.due = t
	s := t % wheelSlots
	m.next = w.slots[s]
	w.slots[s] = m
	w.used[s/64] |= 1 << (s % 64)
	if t < w.sleep {
		w.sleep = t
		w.signal()
	}
}

// run is the Wheel's goroutine.
func (w *Wheel) run() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		w.mu.Lock()
		if w.live == 0 {
			w.stopLocked()
			w.mu.Unlock()
			return
		}
		tick := w.clk.now() / w.tick
		batch := w.collectLocked(tick)
		w.sleep = math.MinInt64 // inserts while busy need no wake-up
		w.mu.Unlock()

		// The Monitors see the tick's own time, so that a probe sent at a
		// tick has its Timeout end on a tick when the Timeout is a whole
		// number of ticks: one tick of delay in all, not two.
		w.runBatch(batch, tick*w.tick)

		w.mu.Lock()
		next := w.nextLocked()
		w.sleep = next
		w.mu.Unlock()
		if next == math.MaxInt64 {
			<-w.wake
			continue
		}
		timer.Reset(time.Duration(next*w.tick - w.clk.now()))
		select {
		case <-timer.C:
		case <-w.wake:
		}
	}
}

// stopLocked forgets every slot (only done Monitors are left in them) and
// marks the goroutine ended. w.mu must be held.
func (w *Wheel) stopLocked() {
	w.slots = [wheelSlots]*Monitor{}
	w.used = [wheelSlots / 64]uint64{}
	w.running = false
	w.sleep = math.MaxInt64
}

// collectLocked takes the Monitors due at or before tick now out of their
// slots and returns them as a list linked through next; those of a later
// turn stay. w.mu must be held.
func (w *Wheel) collectLocked(now int64) *Monitor {
	var batch *Monitor
	for t := w.cur; t <= min(now, w.cur+wheelSlots-1); t++ {
		s := t % wheelSlots
		if w.used[s/64]&(1<<(s%64)) == 0 {
			continue
		}
		list := w.slots[s]
		w.slots[s] = nil
		w.used[s/64] &^= 1 << (s % 64)
		for m := list; m != nil; {
			next := m.next
			if m.due > now { // a later turn: back in its slot
				m.next = w.slots[s]
				w.slots[s] = m
				w.used[s/64] |= 1 << (s % 64)
			} else {
				m.next = batch
				batch = m
			}
			m = next
		}
	}
	w.cur = max(w.cur, now+1)
	return batch
}

// nextLocked returns the first tick at or after cur whose slot is not
// empty, or MaxInt64. w.mu must be held.
func (w *Wheel) nextLocked() int64 {
	start := w.cur % wheelSlots
	for i := int64(0); i <= wheelSlots/64; i++ {
		word := (start/64 + i) % (wheelSlots / 64)
		bitsLeft := w.used[word]
		if i == 0 {
			bitsLeft &^= 1<<(start%64) - 1 // slots before start: the next turn
		}
		if i == wheelSlots/64 {
			bitsLeft = w.used[word] & (1<<(start%64) - 1)
		}
		if bitsLeft == 0 {
			continue
		}
		s := word*64 + int64(bits.TrailingZeros64(bitsLeft))
		return w.cur + (s-start+wheelSlots)%wheelSlots
	}
	return math.MaxInt64
}

// runBatch steps each due Monitor and puts it back on the wheel.
func (w *Wheel) runBatch(batch *Monitor, now int64) {
	for m := batch; m != nil; {
		next := m.next
		m.mu.Lock()
		act, due, err := m.step(now)
		ended := m.state == done
		m.mu.Unlock()
		if !ended {
			w.mu.Lock()
			w.insertLocked(m, due)
			w.mu.Unlock()
		}
		switch act {
		case actProbe:
			m.wheelProbe()
		case actDie:
			m.ended()
			go m.target.OnDead(err)
		}
		m = next
	}
}

// wheelProbe sends a due probe from the Wheel's goroutine: TryProbe if the
// Target has it, otherwise (or if it could not be tried) Probe on a
// goroutine of its own.
func (m *Monitor) wheelProbe() {
	if tp, ok := m.target.(TryProber); ok {
		if tried, err := tp.TryProbe(); tried {
			if m.probeFailed(err) {
				go m.target.OnDead(&ProbeError{Err: err})
			}
			return
		}
	}
	go m.probe()
}
