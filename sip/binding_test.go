package sip

import (
	"slices"
	"strings"
	"testing"
)

// TestSplitList: Path and Service-Route values split at the commas outside
// angle brackets and quotes.
func TestSplitList(t *testing.T) {
	t.Parallel()
	for in, want := range map[string][]string{
		"<sip:a;lr>, <sip:b;lr>":       {"<sip:a;lr>", "<sip:b;lr>"},
		`"x, y" <sip:a>,<sip:b?h=1,2>`: {`"x, y" <sip:a>`, "<sip:b?h=1,2>"},
		" , <sip:a> ,, ":               {"<sip:a>"},
		"":                             nil,
		`"\"quoted, still" <sip:a>, b`: {`"\"quoted, still" <sip:a>`, "b"},
	} {
		if got := splitList(in); !slices.Equal(got, want) {
			t.Errorf("splitList(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzSplitList: any header value splits without panicking into trimmed,
// non-empty pieces of the input, no more than its commas allow.
//
//	go test -run '^$' -fuzz FuzzSplitList -fuzztime 30s ./sip
func FuzzSplitList(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		out := splitList(s)
		if len(out) > strings.Count(s, ",")+1 {
			t.Fatalf("splitList(%q) = %d pieces", s, len(out))
		}
		for _, p := range out {
			if p == "" || p != strings.TrimSpace(p) || !strings.Contains(s, p) {
				t.Fatalf("splitList(%q) gave %q", s, p)
			}
		}
	})
}
