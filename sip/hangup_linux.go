package sip

import (
	"errors"
	"io"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// hangups tells a flow at once that its peer closed (FIN) or reset (RST)
// the connection, instead of at the flow's next probe: sipgo's reader sees
// the EOF or the reset first, but it drops the connection without a word
// to relink. One epoll instance per UA, with one goroutine blocked in
// epoll_wait, watches the TCP socket under each TCP, TLS, WS and WSS flow
// for EPOLLRDHUP (the peer's FIN), EPOLLHUP and EPOLLERR (a reset): the
// kernel's own notice, without reading a byte (sipgo's reader keeps every
// byte it is sent). The epoll set holds a duplicate of each socket, so that
// sipgo's reader, woken by the same FIN, cannot close the socket (which
// would drop its pending event) before the event is read; the duplicate is
// closed when the flow dies or is retired, so the socket outlives sipgo's
// close by at most that long.
type hangups struct {
	mu     sync.Mutex
	epfd   int // the epoll instance (made on the first watch), -1 if none
	wake   int // eventfd that ends the goroutine
	next   int32
	flows  map[int32]watched
	done   chan struct{}
	closed bool
}

// watched is one flow in the epoll set, by the duplicate of its socket.
type watched struct {
	f  *flow
	fd int
}

func newHangups() *hangups { return &hangups{epfd: -1, wake: -1} }

// errPeerReset is the cause of a flow the peer reset.
var errPeerReset = syscall.ECONNRESET

// start makes the epoll instance and its goroutine, on the first watch;
// false when epoll is unavailable or the UA closed. h.mu is held.
func (h *hangups) startLocked() bool {
	if h.epfd >= 0 {
		return true
	}
	if h.closed {
		return false
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return false
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return false
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: -1}
	if unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev) != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return false
	}
	h.epfd, h.wake, h.done = epfd, wake, make(chan struct{})
	if h.flows == nil {
		h.flows = make(map[int32]watched)
	}
	go h.loop(epfd)
	return true
}

// watch adds the socket under f's connection. It is a no-op for a flow
// without a TCP socket under it, or when epoll is unavailable.
func (h *hangups) watch(f *flow) {
	if h == nil {
		return
	}
	tcp := tcpUnder(f.conn)
	if tcp == nil {
		return
	}
	rc, err := tcp.SyscallConn()
	if err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.startLocked() {
		return
	}
	h.next++
	if h.next <= 0 { // wrapped: ids are positive (0: not watched, -1: wake)
		h.next = 1
	}
	id := h.next
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR | unix.EPOLLONESHOT, Fd: id}
	dup := -1
	// Inside Control the socket cannot be closed (and its number reused)
	// under us.
	_ = rc.Control(func(fd uintptr) {
		d, err := unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return
		}
		if unix.EpollCtl(h.epfd, unix.EPOLL_CTL_ADD, d, &ev) != nil {
			unix.Close(d)
			return
		}
		dup = d
	})
	if dup >= 0 {
		h.flows[id] = watched{f: f, fd: dup}
		f.hangID = id
	}
}

// dropLocked takes id out of the set and closes its duplicate (out of the
// set first: the socket may still be open under sipgo).
func (h *hangups) dropLocked(id int32) *flow {
	w, ok := h.flows[id]
	if !ok {
		return nil
	}
	delete(h.flows, id)
	_ = unix.EpollCtl(h.epfd, unix.EPOLL_CTL_DEL, w.fd, nil)
	unix.Close(w.fd)
	return w.f
}

// forget drops f (dead or retired); its socket stays in the set until it
// is closed, and an event for it is ignored.
func (h *hangups) forget(f *flow) {
	if h == nil {
		return
	}
	h.mu.Lock()
	if id := f.hangID; id != 0 && h.flows[id].f == f {
		h.dropLocked(id)
	}
	h.mu.Unlock()
}

func (h *hangups) loop(epfd int) {
	defer close(h.done)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == -1 {
				return // close
			}
			h.mu.Lock()
			f := h.dropLocked(ev.Fd)
			h.mu.Unlock()
			if f != nil {
				f.fail(hangupCause(ev.Events))
			}
		}
	}
}

// hangupCause is the error a hang-up event stands for: a reset, or the
// peer's close (io.EOF).
func hangupCause(events uint32) error {
	if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		return errPeerReset
	}
	return io.EOF
}

// close ends the goroutine and releases the epoll instance.
func (h *hangups) close() {
	if h == nil {
		return
	}
	h.mu.Lock()
	for id := range h.flows {
		h.dropLocked(id)
	}
	epfd, wake := h.epfd, h.wake
	h.epfd, h.closed = -1, true
	h.mu.Unlock()
	if epfd < 0 {
		return
	}
	var one = [8]byte{1}
	_, _ = unix.Write(wake, one[:])
	<-h.done
	unix.Close(epfd)
	unix.Close(wake)
}
