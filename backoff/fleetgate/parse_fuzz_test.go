package fleetgate

import (
	"strings"
	"testing"
)

// FuzzParseAdmit feeds parseAdmit answers of any shape (the fields joined
// by "|"): it never panics, refuses any count of fields but 14, and never
// returns a negative age or Retry-After.
func FuzzParseAdmit(f *testing.F) {
	f.Add("190|198.6|0|16|0|42|5263|-1200|3|812345|207.5|1500000|1000000|50")
	f.Add("20|0|1|1|0|1|0|lost|0|0|0|0|0|1")
	f.Add("1e309|NaN|x|-1|-5|18446744073709551616|-9|9223372036854775807|z|-7|-Inf|-3|-2|-4")
	f.Add("||||||||||||")
	f.Fuzz(func(t *testing.T, s string) {
		v := strings.Split(s, "|")
		rep, live, err := parseAdmit(v)
		if len(v) != 14 {
			if err == nil {
				t.Fatalf("%d fields accepted", len(v))
			}
			return
		}
		if err != nil {
			t.Fatalf("14 fields refused: %v", err)
		}
		if rep.PaceAge < 0 || rep.Pace.CeilingAge < 0 || rep.Pace.RetryAfter < 0 {
			t.Fatalf("negative duration in %+v", rep)
		}
		_ = live
	})
}
