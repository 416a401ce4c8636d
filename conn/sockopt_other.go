//go:build !linux

package conn

import (
	"syscall"
	"time"
)

// hasSocketInfo reports whether unreadBytes and tcpInfo work here: not on
// this platform, so a Conn cannot tell a slow reader from a silent peer, and
// a probe's answer counts only once Read returns it.
const hasSocketInfo = false

// setUserTimeout does nothing: TCP_USER_TIMEOUT is Linux-only. Busy flows
// are then bounded by the OS retransmission limit, or by a Prober.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }

func unreadBytes(syscall.RawConn) (int, error) { return 0, nil }

type tcpState struct {
	lastAckRecv time.Duration
	unacked     uint32
}

func tcpInfo(syscall.RawConn) (tcpState, bool) { return tcpState{}, false }

// canWriteNow: probes are written through the net.Conn, on a goroutine of
// their own.
const canWriteNow = false

func (pb *probeBuf) writeFD(uintptr) {}

func wouldBlock(error) bool { return false }
