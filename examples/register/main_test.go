package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

// TestRegister runs the example against the in-process registrar: it
// registers, prints the change, and unregisters when its context ends.
func TestRegister(t *testing.T) {
	defer goleak.VerifyNone(t)
	reg, err := registrar.New(registrar.Config{Password: "secret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out testkit.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, &out, reg.URI(), "alice", "secret", "", "", time.Hour, sip.DefaultKeepAlive, false)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "→ registered") {
		if time.Now().After(deadline) {
			t.Fatalf("not registered within 5 s:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(reg.Bindings("alice@127.0.0.1")); n != 1 {
		t.Errorf("%d bindings", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	if n := len(reg.Bindings("alice@127.0.0.1")); n != 0 {
		t.Errorf("%d bindings after Ctrl-C", n)
	}
	if !strings.Contains(out.String(), "registered   → unregistered") {
		t.Errorf("output:\n%s", out.String())
	}
	t.Logf("\n%s", out.String())
}
