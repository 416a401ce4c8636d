package backoff_test

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/relinkgo/relink/backoff"
)

func TestOverloaded(t *testing.T) {
	cause := errors.New("BUSY")
	tests := []struct {
		name    string
		err     error
		wantD   time.Duration
		wantOK  bool
		wantMsg string
	}{
		{"nil cause, no hint", backoff.Overloaded(nil, 0), 0, true, "backoff: overloaded"},
		{"nil cause, negative hint", backoff.Overloaded(nil, -time.Second), 0, true, "backoff: overloaded"},
		{"hint", backoff.Overloaded(cause, time.Second), time.Second, true, "backoff: overloaded, retry after 1s: BUSY"},
		{"wrapped", fmt.Errorf("login: %w", backoff.Overloaded(cause, 2*time.Second)), 2 * time.Second, true,
			"login: backoff: overloaded, retry after 2s: BUSY"},
		{"plain error", cause, 0, false, "BUSY"},
		{"nil", nil, 0, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok := backoff.RetryAfter(tt.err)
			if d != tt.wantD || ok != tt.wantOK {
				t.Errorf("RetryAfter = %v, %v; want %v, %v", d, ok, tt.wantD, tt.wantOK)
			}
			if tt.err == nil {
				return
			}
			if got := tt.err.Error(); got != tt.wantMsg {
				t.Errorf("Error() = %q, want %q", got, tt.wantMsg)
			}
			if errors.Is(tt.err, backoff.ErrOverloaded) != tt.wantOK {
				t.Errorf("errors.Is(err, ErrOverloaded) = %v, want %v", !tt.wantOK, tt.wantOK)
			}
			o, ok := backoff.OverloadOutcome(tt.err)
			if ok != tt.wantOK || (ok && o != backoff.Overload(tt.wantD)) {
				t.Errorf("OverloadOutcome = %v, %v; want %v, %v", o, ok, backoff.Overload(tt.wantD), tt.wantOK)
			}
		})
	}
	if err := backoff.Overloaded(io.EOF, 0); !errors.Is(err, io.EOF) {
		t.Errorf("errors.Is(Overloaded(io.EOF, 0), io.EOF) = false")
	}
	if backoff.IsPermanent(backoff.Overloaded(cause, 0)) {
		t.Errorf("an Overloaded error is Permanent")
	}
}
