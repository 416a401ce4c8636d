package backoff

import (
	"errors"

	cenkalti "github.com/cenkalti/backoff/v4"
)

// Permanent wraps err to say that retrying cannot help (bad credentials, a
// forbidden identity, a malformed configuration). The result is a
// *cenkalti/backoff/v4.PermanentError, so cenkalti's Retry stops on it too;
// errors.Is(Permanent(err), err) holds, and errors.As finds err's own types.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return cenkalti.Permanent(err)
}

// IsPermanent reports whether err, or any error it wraps, was marked by
// Permanent (or by cenkalti/backoff's Permanent).
func IsPermanent(err error) bool {
	var p *cenkalti.PermanentError
	return errors.As(err, &p)
}
