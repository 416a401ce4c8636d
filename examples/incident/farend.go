package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/relinkgo/relink/internal/faultproxy"
)

// sipgoTimerF is sipgo's Timer F (64 × T1): how long a REGISTER sent on a
// connection that never answers waits before its transaction fails.
const sipgoTimerF = 32 * time.Second

// Far-end modes (-farend).
const (
	farRST       = "rst"
	farBlackhole = "blackhole"
	farHung      = "hung"
)

// farEnd is what the far end does, at the restore, with the connections it
// had before the outage; new connections are served in every mode.
type farEnd struct {
	forget  func(*faultproxy.Proxy)
	restore string // the timeline's RESTORE line
	note    string // -json's farend_note
	// naiveEnds says where the naive population ends, and why, given what
	// the run measured.
	naiveEnds func(popSummary) string
}

// farEnds are the modes of -farend.
var farEnds = map[string]farEnd{
	farRST: {
		forget:  (*faultproxy.Proxy).ForgetReset,
		restore: "the far end forgot the old connections and answers anything on them with an RST",
		note: "rst: the far end restarted or failed over: it lost the old connections and answers the " +
			"next segment on each with an RST (the proxy resets at the first byte it reads after the restore, " +
			"at once for bytes sent during the outage); new connections are served",
		naiveEnds: func(n popSummary) string {
			return "the RST closes sipgo's connection, but sipgo does not fail the REGISTER pending on it " +
				"(no WithTransactionLayerTerminateOnConnClose by default): it waits for Timer F (32 s after it was sent), " +
				"then the naive gateway retries at once on a new connection; " + naiveOutcome(n)
		},
	},
	farBlackhole: {
		forget:  (*faultproxy.Proxy).ForgetDrop,
		restore: "the old connections stay in a black hole (dropped, no answer), new ones are served",
		note: "blackhole: the old connections stay in a black hole (a firewall or NAT that lost their state drops " +
			"their packets); on loopback without root the proxy emulates it by reading and dropping everything, so " +
			"the client's kernel sees its bytes acknowledged and never gives up (relink's probe declares the flow dead " +
			"within its bound whatever the kernel sees; in a real one TCP_USER_TIMEOUT would fire too); new connections " +
			"are served",
		naiveEnds: func(n popSummary) string {
			return fmt.Sprintf("Timer F (32 s) fails the REGISTER, and the retry goes out at once on the same pooled "+
				"connection (sipgo keeps it: it never notices a silent peer), again and again; %s. In a real black hole "+
				"the kernel aborts the connection after tcp_retries2 (%s: %.1f s of retransmissions after the first "+
				"unacknowledged REGISTER, ~%.0f min), when sipgo drops it and the next retry dials anew; the emulation "+
				"never does, and the run stops after the retry", naiveOutcome(n), retries2Note(), tcpRetries2().Seconds(),
				tcpRetries2().Minutes())
		},
	},
	farHung: {
		forget:  (*faultproxy.Proxy).Forget,
		restore: "the far end's application hangs on the old connections (TCP alive, nothing answers), new ones are served",
		note: "hung: the far end's application hangs on the old connections while its TCP stays alive (the proxy's " +
			"kernel acknowledges, the proxy never reads or answers); new connections are served",
		naiveEnds: func(n popSummary) string {
			return "Timer F (32 s) fails the REGISTER, and the retry goes out at once on the same pooled connection, " +
				"whose peer's TCP acknowledges everything and answers keepalives and window probes: no timer of sipgo's " +
				"or the kernel's ever ends it; " + naiveOutcome(n) + ", and stuck until the gateway is restarted"
		},
	},
}

// farEndNames lists the modes for the flag's usage.
func farEndNames() string { return strings.Join([]string{farRST, farBlackhole, farHung}, "|") }

// naiveOutcome says what the naive population did in the run.
func naiveOutcome(n popSummary) string {
	if n.RecoverS != nil {
		return fmt.Sprintf("here all %d recovered %.1f s after the restore, with %.2f REGISTERs per trunk and %d 503s",
			n.Trunks, *n.RecoverS, n.AttemptsPerTrunk, n.Rejected)
	}
	return fmt.Sprintf("here %d/%d recovered by the end, %.2f REGISTERs per trunk, %d 503s",
		n.Recovered, n.Trunks, n.AttemptsPerTrunk, n.Rejected)
}

// retries2 reads net.ipv4.tcp_retries2 (15 when it cannot be read).
func retries2() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_retries2")
	if err != nil {
		return 15
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 15
	}
	return n
}

func retries2Note() string { return fmt.Sprintf("tcp_retries2 = %d", retries2()) }

// tcpRetries2 is how long Linux retransmits unacknowledged data before it
// aborts the connection, with this machine's tcp_retries2.
func tcpRetries2() time.Duration { return retransmitTimeout(retries2()) }

// retransmitTimeout is how long Linux retransmits unacknowledged data
// before it aborts the connection, for a tcp_retries2 of boundary: the
// retransmission timeout starts at TCP_RTO_MIN (200 ms) and doubles up to
// TCP_RTO_MAX (120 s), and the connection dies when the retransmissions'
// total, computed from TCP_RTO_MIN whatever the real RTT, passes that of
// boundary of them (net/ipv4/tcp_timer.c, retransmits_timed_out): 924.6 s
// for the default 15.
func retransmitTimeout(boundary int) time.Duration {
	const rtoMin, rtoMax = 200 * time.Millisecond, 120 * time.Second
	thresh := 0 // ilog2(rtoMax / rtoMin)
	for r := rtoMax / rtoMin; r > 1; r /= 2 {
		thresh++
	}
	if boundary <= thresh {
		return time.Duration((1<<(boundary+1))-1) * rtoMin
	}
	return time.Duration((1<<(thresh+1))-1)*rtoMin + time.Duration(boundary-thresh)*rtoMax
}
