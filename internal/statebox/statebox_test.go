package statebox

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestWaitWakesOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b Box[int]
		woke := make(chan bool, 1)
		go func() { woke <- b.Wait(context.Background(), 0) }()
		synctest.Wait()
		select {
		case <-woke:
			t.Fatal("Wait returned before the state changed")
		default:
		}
		var hookSaw [2]int
		from, changed := b.Set(2, func(f, to int) { hookSaw = [2]int{f, to} })
		if from != 0 || !changed || hookSaw != [2]int{0, 2} {
			t.Fatalf("Set = %d, %v; hook saw %v", from, changed, hookSaw)
		}
		if !<-woke {
			t.Fatal("Wait reported false after a change")
		}
		if got := b.Get(); got != 2 {
			t.Fatalf("Get = %d, want 2", got)
		}
	})
}

func TestSetSameStateIsNoChange(t *testing.T) {
	var b Box[string]
	b.Set("a", nil)
	called := false
	if _, changed := b.Set("a", func(string, string) { called = true }); changed || called {
		t.Fatalf("Set to the same state: changed=%v hook called=%v", changed, called)
	}
}

func TestWaitReturnsAtOnceWhenDifferent(t *testing.T) {
	var b Box[int]
	b.Set(1, nil)
	if !b.Wait(context.Background(), 0) {
		t.Fatal("Wait(0) with state 1 reported false")
	}
}

func TestWaitEndsWithContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b Box[int]
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if b.Wait(ctx, 0) {
			t.Fatal("Wait reported true without a change")
		}
	})
}
