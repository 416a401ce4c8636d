package backoff

import (
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/metric"
)

// GateState is the admission state of a Gate.
type GateState int

const (
	// GateOpen admits attempts at the gate's pace.
	GateOpen GateState = iota
	// GateClosed means the destination looks unreachable: attempts queue and
	// one scout at a time goes through on a short jittered backoff; the first
	// answer from the destination reopens the gate.
	GateClosed
	// GatePaused means the destination pushed back (a Retry-After): nothing
	// is admitted until the pause ends.
	GatePaused
)

// String returns the state's name: "open", "closed" or "paused";
// "GateState(7)" for an unknown value.
func (s GateState) String() string {
	switch s {
	case GateOpen:
		return "open"
	case GateClosed:
		return "closed"
	case GatePaused:
		return "paused"
	}
	return "GateState(" + strconv.Itoa(int(s)) + ")"
}

// Defaults of GateConfig.
const (
	DefaultMaxInFlight    = 128
	DefaultInitialRate    = 20.0
	DefaultMinRate        = 1.0
	DefaultScoutBase      = 100 * time.Millisecond
	DefaultScoutMax       = 2 * time.Second
	DefaultMaxPushBack    = time.Hour
	maxConfigurableRate   = 1e6
	minConfigurableRate   = 1e-3
	maxConfigurableFlight = 1 << 20
)

// GateConfig configures a Gate. The zero value is a gate that learns the
// destination's capacity from outcomes, with the defaults documented on each
// field. In every numeric field zero means the default and a negative value
// turns the limit or the feature off, as each field says.
type GateConfig struct {
	// Destination names the server the gate guards (host:port or a URI). It
	// becomes the server.address attribute of the gate's metrics and logs
	// and the Destination of its GateStateChange events; never put a
	// password in it.
	Destination string
	// Rate is the most attempts per second the gate admits; it paces at 95 %
	// of it, so that timing jitter does not overrun a server limited to
	// exactly Rate. Zero means adaptive: the gate learns the rate the
	// destination accepts (see Gate). Positive: a ceiling the gate never
	// exceeds, and its starting pace; it still slows down when the
	// destination rejects. Negative turns the rate limit off (only
	// MaxInFlight, push-back and closing apply). At least 10^-3, at most
	// 10^6.
	Rate float64
	// Burst is the token bucket's depth. Zero means max(1, pace/50): a
	// small burst, so admissions are paced, not bunched; and then no 100 ms
	// holds more than pace × 100 ms admissions, so that a late timer's
	// catch-up does not overrun a server that counts its limit per 100 ms
	// window. Positive: that depth, without the 100 ms guard. Negative
	// turns bursts off: a depth of 1, strictly one admission per 1/pace.
	Burst int
	// MaxInFlight bounds the attempts admitted whose Permit.Done has not
	// been called. Zero means DefaultMaxInFlight (128); negative turns the
	// bound off. At most 2^20.
	MaxInFlight int
	// InitialRate is an adaptive gate's starting pace, in attempts per
	// second, before it has measured the destination. Zero means
	// DefaultInitialRate (20/s). The pace doubles every 100 ms (or every
	// round trip, if longer) while attempts queue and none is rejected;
	// with a Fleet, only up to 4 × InitialRate, and by 10 % from there.
	// Negative turns that startup off: the gate starts at MinRate and grows
	// only by its cruise probes (10 % and up, once a second).
	InitialRate float64
	// MinRate is the floor of an adaptive gate's pace. Zero means
	// DefaultMinRate (1/s); negative turns the floor off (the pace may fall
	// to 10^-3/s). Lowered to InitialRate and Rate if above them.
	MinRate float64
	// ScoutBase and ScoutMax bound the jittered delay between scouts while
	// the gate is closed: the n-th failed scout waits a random time in
	// [d/2, d], d = min(ScoutMax, ScoutBase·2^n). Zero means 100 ms and
	// 2 s. One scout at a time is negligible load, so the cap is short:
	// the gate notices a restored path within about ScoutMax, which is also
	// how long a scout lost in a black hole holds the next one back.
	// A negative ScoutBase turns the base off: the delay starts at
	// MinDelay (1 ms) and doubles up to ScoutMax. A negative ScoutMax turns
	// the short cap off (1 h). ScoutBase is at most 1 min, ScoutMax at
	// least ScoutBase.
	ScoutBase, ScoutMax time.Duration
	// MaxPushBack clamps a pause requested by PushBack or an Overload
	// outcome. Zero means DefaultMaxPushBack (1 h): a server's absurd
	// Retry-After does not park the gate for ever. Negative turns the clamp
	// off (up to MaxDelay, 24 h).
	MaxPushBack time.Duration
	// MeterProvider provides the gate's instruments; nil means the global
	// provider (a no-op unless the application set one).
	MeterProvider metric.MeterProvider
	// Logger receives state changes at Info; nil discards.
	Logger *slog.Logger
	// OnStateChange, if set, is called after each state change, outside the
	// gate's lock, in order. It must not block.
	OnStateChange func(GateStateChange)
	// Fleet, if set, shares the gate's admission with the other processes
	// admitting towards Destination (see Fleet; package backoff/fleetgate
	// keeps it on Redis): one pace, one pause, one scout and one learned
	// pace for the whole fleet; Rate is then the fleet's. Nil keeps the
	// gate local to its process. With a negative Rate (no rate limit) the
	// gate shares the pauses it is told and the scout, but admits without
	// asking the fleet, so it hears of other members' pauses only through
	// outcomes of its own.
	Fleet Fleet

	// rand is the source of scout jitter for tests; nil means the
	// process-wide source. It is used under the gate's lock.
	rand *rand.Rand
}

// resolve applies the defaults and clamps of the fields' docs.
func (cfg GateConfig) resolve() GateConfig {
	if math.IsNaN(cfg.Rate) {
		cfg.Rate = 0
	}
	cfg.Rate = math.Min(cfg.Rate, maxConfigurableRate)
	if cfg.Rate > 0 {
		cfg.Rate = math.Max(cfg.Rate, minConfigurableRate)
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	cfg.MaxInFlight = min(cfg.MaxInFlight, maxConfigurableFlight)
	switch {
	case cfg.InitialRate < 0:
		cfg.InitialRate = -1 // no startup: see pacer.reset
	case !(cfg.InitialRate > 0):
		cfg.InitialRate = DefaultInitialRate
	}
	cfg.InitialRate = math.Min(cfg.InitialRate, maxConfigurableRate)
	switch {
	case cfg.MinRate < 0:
		cfg.MinRate = minConfigurableRate
	case !(cfg.MinRate > 0):
		cfg.MinRate = DefaultMinRate
	}
	cfg.MinRate = math.Max(cfg.MinRate, minConfigurableRate)
	if cfg.InitialRate > 0 {
		cfg.MinRate = math.Min(cfg.MinRate, cfg.InitialRate)
	}
	if cfg.Rate > 0 {
		cfg.MinRate = math.Min(cfg.MinRate, cfg.Rate)
	}
	cfg.ScoutBase = clampDur(orOff(cfg.ScoutBase, DefaultScoutBase, MinDelay), MinDelay, time.Minute)
	cfg.ScoutMax = clampDur(orOff(cfg.ScoutMax, DefaultScoutMax, time.Hour), cfg.ScoutBase, time.Hour)
	cfg.MaxPushBack = clampDur(orOff(cfg.MaxPushBack, DefaultMaxPushBack, MaxDelay), MinDelay, MaxDelay)
	return cfg
}

// orOff returns def for zero and off for a negative d.
func orOff(d, def, off time.Duration) time.Duration {
	switch {
	case d == 0:
		return def
	case d < 0:
		return off
	}
	return d
}

// GateStateChange describes a change of a Gate's state, as the Link's and
// the Trunk's events do.
type GateStateChange struct {
	// Destination is GateConfig.Destination.
	Destination string
	// From and To are the states before and after; both are GatePaused
	// when a pause is extended.
	From, To GateState
	// Err says why, when there is an error to tell. A Gate's changes come
	// from outcomes, which carry no error, so it is nil today; the field
	// keeps the shape of conn.LinkStateChange and sip.TrunkStateChange.
	Err error
	// At is when the change happened.
	At time.Time
	// Until is the end of a pause (To == GatePaused), else zero.
	Until time.Time
}

// GateStats is a snapshot of a Gate for metrics and tests.
type GateStats struct {
	State    GateState
	InFlight int
	Queued   int
	// Rate is the current pace in attempts per second; +Inf when unlimited.
	Rate float64
	// Estimate is the destination's capacity as measured while it rejected
	// attempts, in attempts per second; zero until measured.
	Estimate float64
	// PausedUntil is the end of the current push-back, or zero.
	PausedUntil time.Time
	// Admitted counts permits granted; Shed counts Acquire calls that gave
	// up (their ctx ended) before a permit was granted.
	Admitted, Shed uint64
	// Outcomes reported through Permit.Done.
	Succeeded, ClientFailures, Unreachable, Overloaded uint64
}

// ErrClosed is returned by Acquire and AcquirePriority after Gate.Close,
// including to the callers queued when Close was called. It does not wrap
// net.ErrClosed: a closed gate is the end of its owner's lifecycle, not a
// network failure, and no network-error classifier must take it for a dead
// flow to be retried. Retrying cannot help.
var ErrClosed = errors.New("backoff: gate closed")

// errNilGate is returned by Acquire on a nil *Gate.
var errNilGate = errors.New("backoff: nil gate")
