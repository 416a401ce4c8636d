package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A small herd of each strategy: every Link logs in exactly once, and the
// gate hears what the strategy lets it hear — with the login as the
// Handshake, one Success per Link and one Overload per BUSY; with the login
// in the Session (the control), a Success for every connection and no
// Overload at all.
func TestHerdSmall(t *testing.T) {
	for _, c := range []struct {
		strategy string
		hint     bool
	}{{"relink", true}, {"relink", false}, {"relink-rate", true}, {"control", true}} {
		t.Run(fmt.Sprintf("%s/hint=%v", c.strategy, c.hint), func(t *testing.T) {
			o := options{n: 200, capacity: 400, hint: c.hint, retryAfter: 200 * time.Millisecond,
				timeout: 20 * time.Second}
			r := herdWithin(t, &o, c.strategy, o.timeout+10*time.Second)
			t.Logf("%+v", r)
			refused := int(r.RefusedFrac*float64(r.Logins) + 0.5)
			if r.Stuck != 0 || r.Logins-refused != o.n {
				t.Fatalf("stuck %d, %d logins admitted; want 0 and %d (each Link once)", r.Stuck, r.Logins-refused, o.n)
			}
			if r.ReadyS <= 0 || r.ReadyS >= o.timeout.Seconds() {
				t.Fatalf("ready_s %v", r.ReadyS)
			}
			if c.strategy == "control" {
				if r.ReadyEvents != r.Logins {
					t.Errorf("control: %d changes to READY for %d connections", r.ReadyEvents, r.Logins)
				}
				if r.GateOverloaded != 0 || r.GateSucceeded != uint64(r.Logins) {
					t.Fatalf("control: the gate heard %d successes and %d overloads; want one success per connection (%d) and no overload",
						r.GateSucceeded, r.GateOverloaded, r.Logins)
				}
				return
			}
			if r.ReadyEvents != o.n {
				t.Errorf("%d changes to READY for %d Links: a Link was READY before its login", r.ReadyEvents, o.n)
			}
			if r.GateSucceeded != uint64(o.n) || r.GateOverloaded != uint64(refused) {
				t.Fatalf("the gate heard %d successes and %d overloads; want %d (one per login) and %d (one per BUSY)",
					r.GateSucceeded, r.GateOverloaded, o.n, refused)
			}
		})
	}
}

// herdWithin runs herd and returns its Result; it fails the test if herd
// has not returned within d or returned an error.
func herdWithin(t *testing.T, o *options, strategy string, d time.Duration) Result {
	t.Helper()
	type outcome struct {
		r   Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		r, err := herd(context.Background(), o, strategy)
		done <- outcome{r, err}
	}()
	select {
	case out := <-done:
		if out.err != nil {
			t.Fatal(out.err)
		}
		return out.r
	case <-time.After(d):
		t.Fatalf("herd has not returned after %v", d)
		return Result{}
	}
}

func TestUnknownStrategy(t *testing.T) {
	o := options{n: 1, capacity: 1, timeout: time.Second}
	if _, err := herd(context.Background(), &o, "nope"); err == nil || !strings.Contains(err.Error(), "unknown strategy") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseAnswer(t *testing.T) {
	for _, c := range []struct {
		line string
		want answer
		bad  bool
	}{
		{line: "OK", want: answer{ok: true}},
		{line: "BUSY", want: answer{}},
		{line: "BUSY retry-after=1", want: answer{hinted: true, retryAfter: time.Second}},
		{line: "BUSY retry-after=0.25", want: answer{hinted: true, retryAfter: 250 * time.Millisecond}},
		{line: "BUSY retry-after=0", want: answer{hinted: true}},
		{line: "BUSY retry-after=3600", want: answer{hinted: true, retryAfter: time.Hour}},
		{line: "BUSY retry-after=3601", bad: true},
		{line: "BUSY retry-after=-1", bad: true},
		{line: "BUSY retry-after=NaN", bad: true},
		{line: "BUSY retry-after=Inf", bad: true},
		{line: "BUSY retry-after=", bad: true},
		{line: "BUSY retry-after=1s", bad: true},
		{line: "ok", bad: true},
		{line: "", bad: true},
		{line: "OK ", bad: true},
	} {
		got, err := parseAnswer(c.line)
		if c.bad {
			if !errors.Is(err, errBadAnswer) {
				t.Errorf("parseAnswer(%q) = %+v, %v; want errBadAnswer", c.line, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("parseAnswer(%q) = %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
	for _, d := range []time.Duration{-1, 0, time.Second, 1500 * time.Millisecond} {
		line := strings.TrimSuffix(formatBusy(d), "\n")
		a, err := parseAnswer(line)
		if err != nil || a.ok || a.hinted != (d >= 0) || (d >= 0 && a.retryAfter != d) {
			t.Errorf("formatBusy(%v) = %q, parsed %+v, %v", d, line, a, err)
		}
	}
}

func TestReadLine(t *testing.T) {
	r := strings.NewReader("\r\n\nOK\r\nafter")
	line, err := readLine(r)
	if err != nil || line != "OK" {
		t.Fatalf("readLine = %q, %v", line, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "after" {
		t.Fatalf("readLine consumed past its line: %q left", rest)
	}
	if _, err := readLine(strings.NewReader("OK")); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a line cut by EOF: %v", err)
	}
	if _, err := readLine(strings.NewReader("")); !errors.Is(err, io.EOF) {
		t.Fatalf("nothing: %v", err)
	}
	if _, err := readLine(strings.NewReader(strings.Repeat("x", 1000))); !errors.Is(err, errBadAnswer) {
		t.Fatalf("an endless line: %v", err)
	}
}

// FuzzAnswer feeds a server's bytes to the client's reading and parsing of
// the answer: no panic, a bounded line, a hint within its bounds.
func FuzzAnswer(f *testing.F) {
	for _, s := range []string{"OK\n", "BUSY\r\n", "BUSY retry-after=1\n", "\r\n\r\nOK\n", "BUSY retry-after=1e308\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		line, err := readLine(bytes.NewReader(data))
		if err != nil {
			return
		}
		if len(line) > maxAnswer || line == "" {
			t.Fatalf("line of %d bytes", len(line))
		}
		a, err := parseAnswer(line)
		if err != nil {
			if !errors.Is(err, errBadAnswer) {
				t.Fatalf("error %v does not wrap errBadAnswer", err)
			}
			return
		}
		if a.retryAfter < 0 || a.retryAfter > maxRetryAfter || (a.ok && a.hinted) {
			t.Fatalf("answer %+v from %q", a, line)
		}
	})
}
