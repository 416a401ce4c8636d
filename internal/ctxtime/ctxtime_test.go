package ctxtime

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(context.Background(), 3*time.Second) {
			t.Fatal("Sleep reported false on a live context")
		}
		if got := time.Since(start); got != 3*time.Second {
			t.Fatalf("slept %v, want 3s", got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start = time.Now()
		if Sleep(ctx, time.Hour) {
			t.Fatal("Sleep reported true after ctx ended")
		}
		if got := time.Since(start); got != time.Second {
			t.Fatalf("returned after %v, want 1s (the context's end)", got)
		}
		if Sleep(ctx, 0) {
			t.Fatal("Sleep(0) on an ended ctx reported true")
		}
	})
}
