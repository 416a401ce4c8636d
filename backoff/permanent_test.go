package backoff

import (
	"errors"
	"fmt"
	"io"
	"testing"

	cenkalti "github.com/cenkalti/backoff/v4"
)

func TestPermanent(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	if IsPermanent(nil) || IsPermanent(io.EOF) {
		t.Fatal("IsPermanent of a plain error")
	}
	p := Permanent(io.EOF)
	if !errors.Is(p, io.EOF) {
		t.Fatal("errors.Is(Permanent(e), e) is false")
	}
	if !IsPermanent(p) {
		t.Fatal("IsPermanent(Permanent(e)) is false")
	}
	if !IsPermanent(fmt.Errorf("dial: %w", p)) {
		t.Fatal("IsPermanent of a wrapped Permanent is false")
	}
	var pe *cenkalti.PermanentError
	if !errors.As(p, &pe) || !errors.Is(pe.Err, io.EOF) {
		t.Fatal("Permanent is not a *cenkalti.PermanentError")
	}
	calls := 0
	err := cenkalti.Retry(func() error { calls++; return p }, &cenkalti.ZeroBackOff{})
	if calls != 1 || !errors.Is(err, io.EOF) {
		t.Fatalf("cenkalti.Retry: %d calls, err %v", calls, err)
	}
}
