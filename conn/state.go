package conn

import (
	"strconv"
	"time"
)

// LinkState is the connectivity state of a Link, in grpc-go's vocabulary
// (google.golang.org/grpc/connectivity).
//
// A Link starts in LinkIdle. Run moves it to LinkConnecting for each attempt
// (waiting for the Gate, dialing, the TLS handshake and
// LinkConfig.Handshake), to LinkReady once Handshake returned nil, while its
// Session runs, and to LinkTransientFailure after a failed dial
// or a lost connection, while it waits to try again. When Run returns the
// Link is in LinkShutdown.
type LinkState int

const (
	// LinkIdle means that Run has not been called yet.
	LinkIdle LinkState = iota
	// LinkConnecting means that an attempt is in progress — waiting for the Gate's
	// admission, dialing, then the TLS handshake and LinkConfig.Handshake.
	LinkConnecting
	// LinkReady means that a connection is up, its Handshake returned nil
	// (the server accepted the login), and the Session runs on it.
	LinkReady
	// LinkTransientFailure means that the last attempt failed or the connection was
	// lost; the Link waits (backoff, then the Gate) before trying again.
	LinkTransientFailure
	// LinkShutdown means that Run has returned. A new call to Run starts over.
	LinkShutdown
)

var linkStateNames = [...]string{"idle", "connecting", "ready", "transient-failure", "shutdown"}

// String returns the state's name in lower case, words joined by "-"
// ("idle", "connecting", "ready", "transient-failure", "shutdown"), as the
// relink.link.state metric attribute spells it; "LinkState(7)" for a value
// out of range.
func (s LinkState) String() string {
	if s >= 0 && int(s) < len(linkStateNames) {
		return linkStateNames[s]
	}
	return "LinkState(" + strconv.Itoa(int(s)) + ")"
}

// LinkStateChange describes one change of a Link's state, as passed to
// LinkConfig.OnStateChange. Its first fields are those of
// backoff.GateStateChange and sip.TrunkStateChange.
type LinkStateChange struct {
	// Destination is the address of the attempt or connection concerned:
	// the one being dialed (LinkConnecting), connected (LinkReady), or that
	// failed (LinkTransientFailure). It is empty for LinkShutdown before any
	// attempt.
	Destination string
	// From and To are the states before and after the change.
	From, To LinkState
	// Err is why the Link left LinkConnecting or LinkReady: the dial error,
	// the connection's Err (ErrUnresponsive, io.EOF, a reset…), the error
	// the Session returned (a backoff.Permanent one on the way to
	// LinkShutdown), or the cause of Run's context on LinkShutdown. It is
	// nil when there is no error to report (for example a Session that
	// returned nil on a live connection).
	Err error
	// At is when the change happened.
	At time.Time
}
