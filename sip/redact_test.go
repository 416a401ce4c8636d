package sip

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/relinkgo/relink/backoff"
)

// TestPasswordNeverLeaks: a password in a registrar URI reaches neither the
// logs, nor the errors, nor the spans, nor the state events.
func TestPasswordNeverLeaks(t *testing.T) {
	const pw = "s3cretPW"
	ua := newTestUA(t)
	synctest.Test(t, func(t *testing.T) {
		var logs syncBuffer
		spans := tracetest.NewSpanRecorder()
		var events []string
		reg := &fakeRegistrar{rtt: 10 * time.Millisecond,
			answer: func(n int, req *sipmsg.Request) *sipmsg.Response {
				if n%2 == 1 {
					return sipmsg.NewResponseFromRequest(req, 503, "Busy", nil)
				}
				return sipmsg.NewResponseFromRequest(req, 403, "Forbidden", nil)
			}}
		gate := backoff.NewGate(backoff.GateConfig{})
		defer gate.Close()
		tr := virtualTrunk(t, ua, reg, TrunkConfig{
			Registrars: []string{"sip:alice:" + pw + "@registrar.test;transport=tcp"}, Gate: gate,
			Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
			TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)),
			SlowRetry:      time.Second, UnregisterTimeout: -1,
			OnStateChange: func(c TrunkStateChange) {
				events = append(events, fmt.Sprintf("%s %v %v", c.Destination, c.Err, c.Trunk.Registrar()))
			}})
		if err := runFor(tr, 30*time.Second); err != nil && strings.Contains(err.Error(), pw) {
			t.Errorf("Run's error carries the password: %v", err)
		}
		if strings.Contains(logs.String(), pw) {
			t.Errorf("logs carry the password:\n%s", logs.String())
		}
		for _, s := range spans.Ended() {
			if strings.Contains(s.Status().Description, pw) || strings.Contains(fmt.Sprint(s.Attributes(), s.Events()), pw) {
				t.Errorf("span %s carries the password: %q", s.Name(), s.Status().Description)
			}
		}
		for _, e := range events {
			if strings.Contains(e, pw) {
				t.Errorf("state event carries the password: %s", e)
			}
		}
		if len(reg.sent()) < 2 {
			t.Errorf("%d REGISTERs", len(reg.sent()))
		}
	})
	_, err := NewTrunk(ua, TrunkConfig{AOR: "sip:alice@relink.test",
		Registrars: []string{"sip:alice:" + pw + "@registrar.test;transport=pigeon"}})
	if err == nil || strings.Contains(err.Error(), pw) {
		t.Errorf("a configuration error: %v, want one without the password", err)
	}
	serr := &StatusError{Code: 403, Registrar: "sip:alice:" + pw + "@registrar.test"}
	if strings.Contains(serr.Error(), pw) {
		t.Errorf("StatusError.Error() carries the password: %v", serr)
	}
}

// TestRedactURI: only a password is dropped.
func TestRedactURI(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"sip:alice:pw@host;transport=tcp": "sip:alice@host;transport=tcp",
		"sips:a:p@q@host":                 "sips:a@q@host",
		"sip:alice@host:5060":             "sip:alice@host:5060",
		"sip:host:5060;x=a@b":             "sip:host:5060;x=a@b",
		"sip:host":                        "sip:host",
		"nonsense":                        "nonsense",
	} {
		if got := redactURI(in); got != want {
			t.Errorf("redactURI(%q) = %q, want %q", in, got, want)
		}
	}
}
