//go:build linux

package conn

import (
	"errors"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// hasSocketInfo reports whether unreadBytes and tcpInfo work here.
const hasSocketInfo = true

// setUserTimeout sets TCP_USER_TIMEOUT, rounded up to a millisecond.
func setUserTimeout(rc syscall.RawConn, d time.Duration) error {
	ms := int((d + time.Millisecond - 1) / time.Millisecond)
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("setsockopt TCP_USER_TIMEOUT", serr)
	}
	return nil
}

// unreadBytes returns the bytes received and not yet read (SIOCINQ).
func unreadBytes(rc syscall.RawConn) (int, error) {
	var n int
	var serr error
	err := rc.Control(func(fd uintptr) {
		n, serr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	})
	if err != nil {
		return 0, err
	}
	return n, serr
}

// tcpState is what TCP_INFO says about the peer's kernel.
type tcpState struct {
	lastAckRecv time.Duration // since the last ACK from the peer
	unacked     uint32        // segments sent and not acknowledged
}

// tcpInfo reads TCP_INFO.
func tcpInfo(rc syscall.RawConn) (tcpState, bool) {
	var info *unix.TCPInfo
	var serr error
	if err := rc.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return tcpState{}, false
	}
	return tcpState{
		lastAckRecv: time.Duration(info.Last_ack_recv) * time.Millisecond,
		unacked:     info.Unacked,
	}, true
}

// canWriteNow reports whether a probe can be written on the socket without
// blocking (probeBuf.writeFD).
const canWriteNow = true

// writeFD writes pb.b on the socket fd without waiting: fd is
// non-blocking, so a full send buffer gives a short count or EAGAIN.
func (pb *probeBuf) writeFD(fd uintptr) { pb.n, pb.errno = unix.Write(int(fd), pb.b) }

// wouldBlock reports whether errno means the send buffer is full.
func wouldBlock(errno error) bool { return errors.Is(errno, unix.EAGAIN) }
