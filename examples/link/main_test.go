package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// capture sends the demonstration's lines to a buffer for one test.
func capture(t *testing.T) *testkit.SyncBuffer {
	t.Helper()
	buf := &testkit.SyncBuffer{}
	out, start = buf, time.Now()
	t.Cleanup(func() { out = os.Stdout })
	return buf
}

// runWithin runs the demonstration with o and returns its error; it fails
// the test if run has not returned within d (its ctx ends at d, and run has
// one more second to return).
func runWithin(t *testing.T, o options, d time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, o) }()
	select {
	case err := <-done:
		return err
	case <-time.After(d + time.Second):
		t.Fatalf("run has not returned %v after it was stopped", time.Second)
		return nil
	}
}

// The demonstration with no flags, end to end: it ends by itself, every
// READY follows a welcomed login, a BUSY pauses the gate, the hung server is
// noticed by the probe through TLS, and the restarted server is logged in to
// again.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the 12 s demonstration")
	}
	buf := capture(t)
	began := time.Now()
	if err := runWithin(t, options{user: "demo", password: password, interval: time.Second, timeout: time.Second}, 30*time.Second); err != nil {
		t.Fatalf("run: %v\n%s", err, buf)
	}
	if took := time.Since(began); took > 15*time.Second {
		t.Fatalf("ran %v, want about 12 s", took)
	}
	log := buf.String()
	t.Log("\n" + log)
	lines := strings.Split(log, "\n")
	welcomed, readies := 0, 0
	for i, l := range lines {
		switch {
		case strings.Contains(l, "login: WELCOME"):
			welcomed++
		case strings.Contains(l, "→ ready"):
			readies++
			if !welcomedSince(lines[:i]) {
				t.Errorf("line %d: READY without a welcomed login since the link's last change: %q", i, l)
			}
		}
	}
	if readies < 3 || readies != welcomed {
		t.Errorf("%d READY, %d logins welcomed; want at least 3 (start, after the hang, after the restart), one each", readies, welcomed)
	}
	for _, want := range []string{
		`server: BUSY 1 to demo`,
		`login: backoff: overloaded, retry after 1s: login: server busy`,
		`gate: open → paused for`,
		`server: hanging`,
		`peer unresponsive`,
		`server: restarting`,
		`connection refused`,
		`link: Run returned: -duration 12s elapsed`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("no %q in the output", want)
		}
	}
	if n := len(regexp.MustCompile(`session \d+: started`).FindAllString(log, -1)); n != readies {
		t.Errorf("%d sessions for %d READY", n, readies)
	}
}

// welcomedSince reports whether a login was welcomed after the last of
// lines that shows a change of the link's state.
func welcomedSince(lines []string) bool {
	for i := len(lines) - 1; i >= 0; i-- {
		switch {
		case strings.Contains(lines[i], "login: WELCOME"):
			return true
		case strings.Contains(lines[i], "] link: "):
			return false
		}
	}
	return false
}

// A wrong password: DENIED is permanent, the Link stops at once and run
// returns the Handshake's error.
func TestDenied(t *testing.T) {
	buf := capture(t)
	began := time.Now()
	err := runWithin(t, options{user: "demo", password: "wrong", interval: time.Second, timeout: time.Second}, 10*time.Second)
	if !errors.Is(err, errDenied) || !backoff.IsPermanent(err) {
		t.Fatalf("run = %v, want the permanent errDenied\n%s", err, buf)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Fatalf("stopped after %v, want at once (after the 1 s of BUSY at most)", took)
	}
	if strings.Contains(buf.String(), "→ ready") {
		t.Fatalf("READY without a login:\n%s", buf)
	}
}

func TestParseAnswer(t *testing.T) {
	for _, c := range []struct {
		line       string
		retryAfter time.Duration // of an Overloaded error; -1: not one
		want       error
	}{
		{"WELCOME demo", -1, nil},
		{"DENIED", -1, errDenied},
		{"BUSY", 0, errBusy},
		{"BUSY 2", 2 * time.Second, errBusy},
		{"BUSY 0", 0, errBusy},
		{"BUSY -1", -1, errBadAnswer},
		{"BUSY 3601", -1, errBadAnswer},
		{"BUSY soon", -1, errBadAnswer},
		{"WELCOME", -1, errBadAnswer},
		{"HELLO", -1, errBadAnswer},
	} {
		err := parseAnswer(c.line)
		if !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("parseAnswer(%q) = %v, want %v", c.line, err, c.want)
			continue
		}
		d, over := backoff.RetryAfter(err)
		if over != (c.retryAfter >= 0) || (over && d != c.retryAfter) {
			t.Errorf("parseAnswer(%q) = %v: overloaded %v, retry after %v; want %v", c.line, err, over, d, c.retryAfter)
		}
		if backoff.IsPermanent(err) != errors.Is(err, errDenied) {
			t.Errorf("parseAnswer(%q) = %v: permanent %v", c.line, err, backoff.IsPermanent(err))
		}
	}
}

// FuzzAnswer feeds a server's bytes to the Handshake's reading and parsing:
// no panic, and every error is one of the login's.
func FuzzAnswer(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		line, err := readAnswer(bytes.NewReader(data))
		if err != nil {
			return
		}
		if line == "" || len(line) > 128 {
			t.Fatalf("line of %d bytes", len(line))
		}
		err = parseAnswer(line)
		if err != nil && !errors.Is(err, errBusy) && !errors.Is(err, errDenied) && !errors.Is(err, errBadAnswer) {
			t.Fatalf("parseAnswer(%q) = %v", line, err)
		}
		if d, ok := backoff.RetryAfter(err); ok && (d < 0 || d > time.Hour) {
			t.Fatalf("parseAnswer(%q): retry after %v", line, d)
		}
	})
}
