package conn

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

func TestConfigResolution(t *testing.T) {
	defKA := net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: time.Second, Count: 10}
	for _, tc := range []struct {
		name     string
		cfg      Config
		ka       net.KeepAliveConfig
		kaOn     bool
		ut       time.Duration
		utOn     bool
		probe    bool
		iv, to   time.Duration
		writeTmo time.Duration
	}{
		{name: "zero", ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true},
		{name: "zero with CRLF", cfg: Config{Probe: CRLF}, ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true,
			probe: true, iv: 10 * time.Second, to: 5 * time.Second},
		{name: "keepalive disabled", cfg: Config{KeepAlive: net.KeepAliveConfig{Idle: -1}}, ut: 15 * time.Second, utOn: true},
		{name: "keepalive Enable false with fields", cfg: Config{KeepAlive: net.KeepAliveConfig{Idle: time.Second}}, ut: 15 * time.Second, utOn: true},
		{name: "keepalive partial", cfg: Config{KeepAlive: net.KeepAliveConfig{Enable: true, Count: 7, Idle: -1}},
			ka: net.KeepAliveConfig{Enable: true, Idle: -1, Interval: time.Second, Count: 7}, kaOn: true, ut: 15 * time.Second, utOn: true},
		{name: "user timeout off", cfg: Config{UserTimeout: -time.Second}, ka: defKA, kaOn: true},
		{name: "user timeout tiny", cfg: Config{UserTimeout: time.Nanosecond}, ka: defKA, kaOn: true, ut: time.Millisecond, utOn: true},
		{name: "user timeout huge", cfg: Config{UserTimeout: math.MaxInt64}, ka: defKA, kaOn: true, ut: math.MaxInt32 * time.Millisecond, utOn: true},
		{name: "probe interval off", cfg: Config{Probe: CRLF, ProbeInterval: -1}, ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true},
		{name: "probe timeout off", cfg: Config{Probe: CRLF, ProbeTimeout: -1}, ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true},
		{name: "probe clamped", cfg: Config{Probe: CRLF, ProbeInterval: 1, ProbeTimeout: time.Millisecond}, ka: defKA, kaOn: true,
			ut: 15 * time.Second, utOn: true, probe: true, iv: MinProbeInterval, to: MinProbeInterval},
		{name: "probe custom", cfg: Config{Probe: CRLF, ProbeInterval: time.Second, ProbeTimeout: 2 * time.Second}, ka: defKA, kaOn: true,
			ut: 15 * time.Second, utOn: true, probe: true, iv: time.Second, to: 2 * time.Second},
		{name: "write timeout negative", cfg: Config{WriteTimeout: -1}, ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true},
		{name: "write timeout", cfg: Config{WriteTimeout: time.Second}, ka: defKA, kaOn: true, ut: 15 * time.Second, utOn: true, writeTmo: time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ka, kaOn := tc.cfg.keepAlive()
			if kaOn != tc.kaOn || (kaOn && ka != tc.ka) {
				t.Errorf("keepAlive() = %+v, %v; want %+v, %v", ka, kaOn, tc.ka, tc.kaOn)
			}
			ut, utOn := tc.cfg.userTimeout()
			if ut != tc.ut || utOn != tc.utOn {
				t.Errorf("userTimeout() = %v, %v; want %v, %v", ut, utOn, tc.ut, tc.utOn)
			}
			p, iv, to := tc.cfg.probing()
			if (p != nil) != tc.probe || iv != tc.iv || to != tc.to {
				t.Errorf("probing() = %v, %v, %v; want %v, %v, %v", p != nil, iv, to, tc.probe, tc.iv, tc.to)
			}
			if got := tc.cfg.writeTimeout(); got != tc.writeTmo {
				t.Errorf("writeTimeout() = %v, want %v", got, tc.writeTmo)
			}
			d := tc.cfg.NetDialer()
			if tc.kaOn != (d.KeepAlive >= 0) || (tc.kaOn && d.KeepAliveConfig != tc.ka) {
				t.Errorf("NetDialer keepalive %v %+v", d.KeepAlive, d.KeepAliveConfig)
			}
			if (d.ControlContext != nil) != tc.utOn {
				t.Errorf("NetDialer ControlContext set: %v, want %v", d.ControlContext != nil, tc.utOn)
			}
		})
	}
}

// The defaults bound detection at 15 s by each mechanism.
func TestDefaultsBoundDetectionAt15s(t *testing.T) {
	const bound = 15 * time.Second
	var c Config
	ka, _ := c.keepAlive()
	if idle := ka.Idle + time.Duration(ka.Count)*ka.Interval; idle != bound {
		t.Errorf("keepalive bound %v", idle)
	}
	if ut, _ := c.userTimeout(); ut != bound {
		t.Errorf("user timeout %v", ut)
	}
	c.Probe = CRLF
	if _, iv, to := c.probing(); iv+to != bound {
		t.Errorf("probe bound %v", iv+to)
	}
}

func TestClassifyIOError(t *testing.T) {
	opErr := func(errno error) error {
		return &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", errno)}
	}
	for _, tc := range []struct {
		err          error
		reason       int
		terminal     bool
		unresponsive bool
	}{
		{io.EOF, reasonEOF, true, false},
		{opErr(syscall.ETIMEDOUT), reasonKernelTimeout, true, true},
		{opErr(syscall.ECONNRESET), reasonReset, true, false},
		{opErr(syscall.EPIPE), reasonReset, true, false},
		{&net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, reasonOther, false, false},
		{&net.OpError{Op: "read", Err: net.ErrClosed}, reasonOther, true, false},
		{io.ErrClosedPipe, reasonOther, true, false},
		{errors.New("tls: bad record MAC"), reasonOther, true, false},
	} {
		t.Run(fmt.Sprint(tc.err), func(t *testing.T) {
			cause, reason, terminal := classifyIOError(tc.err)
			if reason != tc.reason || terminal != tc.terminal || errors.Is(cause, ErrUnresponsive) != tc.unresponsive {
				t.Fatalf("classify(%v) = %v, %s, %v", tc.err, cause, reasonNames[reason], terminal)
			}
			if !errors.Is(cause, tc.err) && !errors.Is(tc.err, cause) && !errors.Is(cause, syscall.ETIMEDOUT) {
				t.Fatalf("cause %v lost %v", cause, tc.err)
			}
			if tc.unresponsive {
				var ne net.Error
				if !errors.As(cause, &ne) || !ne.Timeout() || !errors.Is(cause, syscall.ETIMEDOUT) {
					t.Fatalf("kernel timeout cause %v: want net.Error Timeout wrapping ETIMEDOUT", cause)
				}
			}
		})
	}
}

func TestProbeFailure(t *testing.T) {
	cause, reason := probeFailure(&net.OpError{Op: "write", Err: os.ErrDeadlineExceeded})
	if !errors.Is(cause, ErrUnresponsive) || !errors.Is(cause, os.ErrDeadlineExceeded) || reason != reasonUnresponsive {
		t.Fatalf("probe timeout: %v (%s)", cause, reasonNames[reason])
	}
	boom := errors.New("boom")
	cause, reason = probeFailure(boom)
	if errors.Is(cause, ErrUnresponsive) || !errors.Is(cause, boom) || reason != reasonProbeError {
		t.Fatalf("probe error: %v (%s)", cause, reasonNames[reason])
	}
}
