package sip

// Parsing of values that come from the registrar. Everything a peer sends is
// untrusted: each function here accepts any string without panicking and
// clamps absurd values to the bounds below, so that a broken or hostile
// registrar can neither park a trunk for ever nor spin it in a busy loop.
// FuzzParse* in fuzz_test.go exercise every function with the seed corpus in
// testdata/fuzz.

import (
	"errors"
	"strings"
	"time"

	"github.com/icholy/digest"
)

// Bounds applied to values received from a registrar.
const (
	// maxDeltaSeconds is RFC 3261's largest delta-seconds (2^32-1); a longer
	// run of digits is read as this value (§20.19: "if a value larger than
	// 2^32-1 is received, treat it as 2^32-1").
	maxDeltaSeconds = 1<<32 - 1

	// MaxExpires bounds every registration interval: the Expires a trunk
	// asks for, a Min-Expires it is told to use, and the grant it obeys.
	// A registrar asking for more than a day is clamped to a day.
	MaxExpires = 24 * time.Hour

	// MaxRetryAfter bounds a Retry-After: a 503 with Retry-After 10^12 s
	// pauses a registrar for at most 5 minutes, and the gates sip makes
	// (a Fleet's, a trunk's private one) cap every push-back at it. A
	// refresh held past the end of its binding by a longer pause (a Gate
	// of your own) gives the binding up (ErrBindingExpired) and moves on.
	MaxRetryAfter = 5 * time.Minute

	// MinFlowTimer and MaxFlowTimer bound a Flow-Timer (RFC 5626 §4.4.1):
	// a registrar cannot make a trunk ping more than about once a second,
	// nor stretch the keepalive interval beyond a day.
	MinFlowTimer = time.Second
	MaxFlowTimer = 24 * time.Hour
)

// parseDeltaSeconds parses RFC 3261's delta-seconds (1*DIGIT) surrounded by
// optional whitespace. Values above 2^32-1 are clamped to it. ok is false for
// anything else (empty, signs, letters, embedded spaces).
func parseDeltaSeconds(s string) (secs uint64, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if secs < maxDeltaSeconds {
			secs = secs*10 + uint64(c-'0')
		}
	}
	return min(secs, maxDeltaSeconds), true
}

func secondsClamped(secs uint64, hi time.Duration) time.Duration {
	if secs >= uint64(hi/time.Second) {
		return hi
	}
	return time.Duration(secs) * time.Second
}

// parseExpires parses an Expires or Min-Expires header value (delta-seconds),
// clamped to MaxExpires. Zero is a valid value (a removed binding).
func parseExpires(v string) (time.Duration, bool) {
	secs, ok := parseDeltaSeconds(v)
	if !ok {
		return 0, false
	}
	return secondsClamped(secs, MaxExpires), true
}

// parseRetryAfter parses a Retry-After value (RFC 3261 §20.33):
//
//	Retry-After = delta-seconds [ comment ] *( SEMI retry-param )
//
// e.g. "120", "120 (overloaded)", "120;duration=3600". The comment and the
// parameters (duration is how long the callee will be available, which means
// nothing for a REGISTER) are ignored. The result is clamped to MaxRetryAfter.
func parseRetryAfter(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	end := strings.IndexAny(v, "(; \t")
	if end >= 0 {
		rest := strings.TrimSpace(v[end:])
		if rest != "" && rest[0] != '(' && rest[0] != ';' {
			return 0, false
		}
		v = v[:end]
	}
	secs, ok := parseDeltaSeconds(v)
	if !ok {
		return 0, false
	}
	return secondsClamped(secs, MaxRetryAfter), true
}

// parseFlowTimer parses a Flow-Timer value (RFC 5626 §11.3, delta-seconds)
// clamped to [MinFlowTimer, MaxFlowTimer].
func parseFlowTimer(v string) (time.Duration, bool) {
	secs, ok := parseDeltaSeconds(v)
	if !ok {
		return 0, false
	}
	return max(secondsClamped(secs, MaxFlowTimer), MinFlowTimer), true
}

// parseContactExpires parses the expires parameter of a Contact (the
// unquoted parameter value; quotes are tolerated), clamped to MaxExpires.
func parseContactExpires(v string) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	return parseExpires(v)
}

// errChallenge is wrapped by every challenge parsing error.
var errChallenge = errors.New("sip: unusable digest challenge")

// maxChallengeLen bounds the WWW-Authenticate value relink parses; sipgo
// already bounds the whole message, this bounds the work per header.
const maxChallengeLen = 4096

// parseChallenge parses a WWW-Authenticate or Proxy-Authenticate value and
// checks that relink can answer it: a Digest challenge with a nonce, an
// algorithm of MD5, SHA-256, SHA-512 or SHA-512-256 (any case; -sess variants
// are not supported), and either no qop or a qop that offers "auth". The
// algorithm is upper-cased and the qop list trimmed, as digest.Digest expects.
func parseChallenge(v string) (*digest.Challenge, error) {
	if len(v) > maxChallengeLen {
		return nil, errChallenge
	}
	c, err := digest.ParseChallenge(strings.TrimSpace(v))
	if err != nil {
		return nil, errors.Join(errChallenge, err)
	}
	if c.Nonce == "" {
		return nil, errChallenge
	}
	c.Algorithm = strings.ToUpper(strings.TrimSpace(c.Algorithm))
	qop := c.QOP[:0]
	for _, q := range c.QOP {
		if q = strings.ToLower(strings.TrimSpace(q)); q != "" {
			qop = append(qop, q)
		}
	}
	c.QOP = qop
	if len(c.QOP) > 0 && !c.SupportsQOP("auth") {
		// auth-int would hash the body; a REGISTER has none, but servers
		// offering only auth-int are rare enough not to be worth it.
		return nil, errChallenge
	}
	if !digest.CanDigest(c) {
		return nil, errChallenge
	}
	return c, nil
}
