package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	b := NewBucket(10, 2) // one token per 100 ms, two saved at most
	t0 := time.Unix(1000, 0)
	var got []bool
	for _, at := range []time.Duration{0, 0, 0, 50, 100, 150, 200, 600, 600, 600} {
		got = append(got, b.Admit(t0.Add(at*time.Millisecond)))
	}
	want := []bool{true, true, false, false, true, false, true, true, true, false}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("admit %v, want %v", got, want)
	}
	// A time before the last Admit earns nothing.
	if b.Admit(t0) {
		t.Error("admitted at an earlier time with an empty bucket")
	}
	b.SetRate(20, 0.5) // depth raised to 1
	if !b.Admit(t0.Add(700*time.Millisecond)) || b.Admit(t0.Add(700*time.Millisecond)) {
		t.Error("after SetRate(20, 0.5): want one admission per 50 ms")
	}
	b.SetRate(0, 1)
	for range 10 {
		if !b.Admit(t0) {
			t.Fatal("unlimited bucket refused")
		}
	}
	var z Bucket
	if !z.Admit(t0) {
		t.Fatal("zero Bucket refused")
	}
}
