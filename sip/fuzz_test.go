package sip

import (
	"strings"
	"testing"
	"time"
)

// The fuzz targets feed every parser of registrar input with arbitrary
// strings: none may panic, and every accepted value must lie within its
// documented bounds. Seeds are in testdata/fuzz/<target>/.
//
//	go test -run '^$' -fuzz FuzzParseRetryAfter -fuzztime 30s ./sip

func checkBound(t *testing.T, what, in string, d time.Duration, ok bool, lo, hi time.Duration) {
	t.Helper()
	if !ok {
		if d != 0 {
			t.Fatalf("%s(%q) = %v with ok false", what, in, d)
		}
		return
	}
	if d < lo || d > hi {
		t.Fatalf("%s(%q) = %v outside [%v, %v]", what, in, d, lo, hi)
	}
}

func FuzzParseExpires(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseExpires(s)
		checkBound(t, "parseExpires", s, d, ok, 0, MaxExpires)
		if ok && strings.TrimSpace(s) == "" {
			t.Fatalf("accepted blank %q", s)
		}
	})
}

func FuzzParseRetryAfter(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseRetryAfter(s)
		checkBound(t, "parseRetryAfter", s, d, ok, 0, MaxRetryAfter)
	})
}

func FuzzParseFlowTimer(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseFlowTimer(s)
		checkBound(t, "parseFlowTimer", s, d, ok, MinFlowTimer, MaxFlowTimer)
	})
}

func FuzzParseContactExpires(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := parseContactExpires(s)
		checkBound(t, "parseContactExpires", s, d, ok, 0, MaxExpires)
	})
}

func FuzzParseChallenge(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseChallenge(s)
		if err != nil {
			if c != nil {
				t.Fatal("challenge with an error")
			}
			return
		}
		if c.Nonce == "" {
			t.Fatalf("accepted %q without a nonce", s)
		}
		if len(c.QOP) > 0 && !c.SupportsQOP("auth") {
			t.Fatalf("accepted %q without qop auth", s)
		}
		// Whatever was accepted can be answered.
		var a authState
		a.set(c, false)
		if a.header("REGISTER", "sip:x", "u", "p") == nil {
			t.Fatalf("accepted %q but cannot answer it", s)
		}
	})
}
