package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.DiscardHandler))
	goleak.VerifyTestMain(m)
}

// TestTelemetry runs the example and checks that the final export holds
// every instrument of sip, backoff and conn that the scenario exercises, and
// that the figures tell its story.
func TestTelemetry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	s := out.String()
	i := strings.Index(s, "=== final export")
	if i < 0 || !strings.Contains(s, "=== export during the recovery") {
		t.Fatalf("missing exports:\n%s", s)
	}
	mid, final := s[:i], s[i:]
	for _, name := range instruments {
		if name == "relink.gate.shed" { // nobody gives up waiting in this run
			continue
		}
		if !strings.Contains(final, "  "+name+" ") {
			t.Errorf("final export lacks %s", name)
		}
	}
	for _, want := range []string{
		"scope github.com/relinkgo/relink/sip", "scope github.com/relinkgo/relink/backoff", "scope github.com/relinkgo/relink/conn",
		"sip.response.status_class=5xx", "relink.outcome=overload", "error.type=unresponsive",
		"sip.register (", "conn.Dial (", "relink.link.connect (",
	} {
		if !strings.Contains(final, want) {
			t.Errorf("final export lacks %q", want)
		}
	}
	// During the recovery the registrar's gate is paused (state 2) with the
	// five trunks in backoff.
	if !strings.Contains(mid, "relink.sip.state=backoff") {
		t.Errorf("mid-run export lacks the backoff state:\n%s", mid)
	}
	if t.Failed() {
		t.Logf("output:\n%s", s)
	}
}
