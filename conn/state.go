package conn

import "strconv"

// State is the connectivity state of a Link, in grpc-go's vocabulary
// (google.golang.org/grpc/connectivity).
//
// A Link starts Idle. Run moves it to Connecting for each attempt (waiting
// for the Gate, then dialing), to Ready while a connection is up and its
// Session runs, and to TransientFailure after a failed dial or a lost
// connection, while it waits to try again. When Run returns the Link is in
// Shutdown.
type State int

const (
	// Idle: Run has not been called yet.
	Idle State = iota
	// Connecting: an attempt is in progress — waiting for the Gate's
	// admission, then dialing.
	Connecting
	// Ready: a connection is up and the Session runs on it.
	Ready
	// TransientFailure: the last attempt failed or the connection was lost;
	// the Link waits (backoff, then the Gate) before trying again.
	TransientFailure
	// Shutdown: Run has returned. A new call to Run starts over.
	Shutdown
)

// String returns the state's name as grpc-go spells it ("IDLE",
// "CONNECTING", "READY", "TRANSIENT_FAILURE", "SHUTDOWN").
func (s State) String() string {
	switch s {
	case Idle:
		return "IDLE"
	case Connecting:
		return "CONNECTING"
	case Ready:
		return "READY"
	case TransientFailure:
		return "TRANSIENT_FAILURE"
	case Shutdown:
		return "SHUTDOWN"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// StateChange describes one change of a Link's State, as passed to
// LinkConfig.OnStateChange.
type StateChange struct {
	// From and To are the states before and after the change.
	From, To State
	// Err is why the Link left Connecting or Ready: the dial error, the
	// connection's Err (ErrUnresponsive, io.EOF, a reset…), the error the
	// Session returned, or the cause of Run's context on Shutdown. It is nil
	// when there is no error to report (for example a Session that returned
	// nil on a live connection).
	Err error
	// Addr is the address of the attempt or connection concerned: the one
	// being dialed (Connecting), connected (Ready), or that failed
	// (TransientFailure). It is empty for Shutdown before any attempt.
	Addr string
}
