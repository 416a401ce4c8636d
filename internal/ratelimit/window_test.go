package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	c := NewWindow(100*time.Millisecond, 30) // 3 per window
	t0 := time.Unix(1000, 0)
	var got []bool
	for _, at := range []time.Duration{0, 10, 20, 30, 99, 100, 150, 199, 200} {
		got = append(got, c.Admit(t0.Add(at*time.Millisecond)))
	}
	want := []bool{true, true, true, false, false, true, true, true, true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("admit %v, want %v", got, want)
	}
	c.SetCapacity(0.5) // under one per window: still one
	if !c.Admit(t0.Add(time.Second)) || c.Admit(t0.Add(time.Second+time.Millisecond)) {
		t.Error("capacity 0.5/s with 100 ms windows: want 1 per window")
	}
	c.SetCapacity(0)
	for range 10 {
		if !c.Admit(t0) {
			t.Fatal("unlimited counter refused")
		}
	}
}
