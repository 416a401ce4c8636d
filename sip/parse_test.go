package sip

import (
	"testing"
	"time"
)

func TestParseDurations(t *testing.T) {
	type fn func(string) (time.Duration, bool)
	for _, tc := range []struct {
		name string
		f    fn
		in   string
		want time.Duration
		ok   bool
	}{
		{"expires", parseExpires, "3600", time.Hour, true},
		{"expires spaces", parseExpires, "  60 ", time.Minute, true},
		{"expires zero", parseExpires, "0", 0, true},
		{"expires empty", parseExpires, "", 0, false},
		{"expires negative", parseExpires, "-5", 0, false},
		{"expires letters", parseExpires, "10s", 0, false},
		{"expires inner space", parseExpires, "1 0", 0, false},
		{"expires above a day", parseExpires, "86401", MaxExpires, true},
		{"expires 2^32", parseExpires, "4294967296", MaxExpires, true},
		{"expires huge", parseExpires, "99999999999999999999999999", MaxExpires, true},
		{"min-expires", parseExpires, "120", 2 * time.Minute, true},
		{"retry-after", parseRetryAfter, "120", 2 * time.Minute, true},
		{"retry-after comment", parseRetryAfter, "18000 (out of office)", MaxRetryAfter, true},
		{"retry-after comment short", parseRetryAfter, "5 (overloaded)", 5 * time.Second, true},
		{"retry-after duration", parseRetryAfter, "30;duration=3600", 30 * time.Second, true},
		{"retry-after both", parseRetryAfter, "30 (busy) ;duration=3600", 30 * time.Second, true},
		{"retry-after 10^12", parseRetryAfter, "1000000000000", MaxRetryAfter, true},
		{"retry-after date", parseRetryAfter, "Mon, 21 Jul 2025 10:00:00 GMT", 0, false},
		{"retry-after junk after", parseRetryAfter, "30 x", 0, false},
		{"retry-after empty", parseRetryAfter, " ", 0, false},
		{"flow-timer", parseFlowTimer, "120", 2 * time.Minute, true},
		{"flow-timer zero", parseFlowTimer, "0", MinFlowTimer, true},
		{"flow-timer huge", parseFlowTimer, "4294967295", MaxFlowTimer, true},
		{"flow-timer bad", parseFlowTimer, "x", 0, false},
		{"contact expires", parseContactExpires, "300", 5 * time.Minute, true},
		{"contact expires quoted", parseContactExpires, `"300"`, 5 * time.Minute, true},
		{"contact expires bad", parseContactExpires, `"`, 0, false},
	} {
		got, ok := tc.f(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %q → %v %v, want %v %v", tc.name, tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParseChallenge(t *testing.T) {
	c, err := parseChallenge(`Digest realm="relink.test", nonce="abc", qop="auth, auth-int", algorithm=md5, stale=TRUE`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Realm != "relink.test" || c.Nonce != "abc" || !c.Stale || c.Algorithm != "MD5" ||
		len(c.QOP) != 2 || c.QOP[1] != "auth-int" {
		t.Errorf("%+v", c)
	}
	for _, bad := range []string{
		``,
		`Basic realm="x"`,
		`Digest realm="x"`, // no nonce
		`Digest realm="x", nonce="n", algorithm=MD5-sess`, // -sess unsupported
		`Digest realm="x", nonce="n", algorithm=SHA-1`,
		`Digest realm="x", nonce="n", qop="auth-int"`, // only auth-int
		`Digest realm="x, nonce="n"`,                  // unterminated quote
		"Digest nonce=\"" + string(make([]byte, maxChallengeLen)) + "\"",
	} {
		if _, err := parseChallenge(bad); err == nil {
			t.Errorf("accepted %.60q", bad)
		}
	}
	if _, err := parseChallenge(`Digest realm="x", nonce="n", algorithm=SHA-256`); err != nil {
		t.Errorf("SHA-256: %v", err)
	}
}
