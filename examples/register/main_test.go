package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/relinkgo/relink/internal/redistest"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// within polls cond every 10 ms until it holds, failing the test after d.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// started runs the example with c until the returned stop is called; stop
// returns run's error.
func started(t *testing.T, c config) (out *testkit.SyncBuffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out = &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, out, c) }()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			t.Fatalf("run did not return within 10 s of Ctrl-C:\n%s", out.String())
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return out, stop
}

func newRegistrar(t *testing.T) *registrar.Registrar {
	t.Helper()
	reg, err := registrar.New(registrar.Config{Password: "secret", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

// TestRegister runs the example against the in-process registrar: it
// registers, prints the change, and unregisters when its context ends.
func TestRegister(t *testing.T) {
	reg := newRegistrar(t)
	out, stop := started(t, config{registrar: reg.URI(), user: "alice", pass: "secret",
		expires: time.Hour, keepalive: sip.DefaultKeepAlive})
	within(t, 5*time.Second, "registered", func() bool { return strings.Contains(out.String(), "→ registered") })
	if n := len(reg.Bindings("alice@127.0.0.1")); n != 1 {
		t.Errorf("%d bindings", n)
	}
	if err := stop(); err != nil {
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

// TestRegisterRedis runs two copies of the example with -redis against a
// real redis-server: both gates join one fleet-wide gate for the registrar
// (two live members in its member set, its admission queue and learned pace
// on Redis), both trunks register, and a copy that stops leaves the member
// set at once (its share released).
func TestRegisterRedis(t *testing.T) {
	rs := redistest.Start(t)
	reg := newRegistrar(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	ctx := context.Background()
	// fleetgate's keys for a registrar: relink:gate:{tcp/HOST:PORT}:...
	key := func(suffix string) string { return "relink:gate:{tcp/" + reg.Addr() + "}:" + suffix }
	members := func() int64 { n, _ := rdb.ZCard(ctx, key("members")).Result(); return n }

	base := config{registrar: reg.URI(), pass: "secret", expires: time.Hour,
		keepalive: sip.DefaultKeepAlive, redis: rs.Addr()}
	alice, bob := base, base
	alice.user, bob.user = "alice", "bob"
	outA, stopA := started(t, alice)
	// The URL form of the flag.
	bob.redis = "redis://" + rs.Addr() + "/0"
	outB, stopB := started(t, bob)
	for name, out := range map[string]*testkit.SyncBuffer{"alice": outA, "bob": outB} {
		within(t, 5*time.Second, name+" registered", func() bool { return strings.Contains(out.String(), "→ registered") })
	}
	if !strings.Contains(outA.String(), "gate shared on Redis "+rs.Addr()) {
		t.Errorf("the banner does not say the gate is shared:\n%s", outA.String())
	}
	within(t, 5*time.Second, "two members", func() bool { return members() == 2 })
	for _, k := range []string{"tat", "pace"} {
		if n, err := rdb.Exists(ctx, key(k)).Result(); err != nil || n != 1 {
			t.Errorf("key %s: exists %d, %v (the admissions did not go through Redis)", key(k), n, err)
		}
	}
	if err := stopA(); err != nil {
		t.Errorf("alice: %v", err)
	}
	if n := members(); n != 1 {
		t.Errorf("%d members right after alice stopped, want 1", n)
	}
	if err := stopB(); err != nil {
		t.Errorf("bob: %v", err)
	}
	if n := members(); n != 0 {
		t.Errorf("%d members after both stopped, want 0", n)
	}
	if n := len(reg.Bindings("alice@127.0.0.1")) + len(reg.Bindings("bob@127.0.0.1")); n != 0 {
		t.Errorf("%d bindings left", n)
	}
}

// A -redis that is not an address is a clear error, before anything runs.
func TestRegisterBadRedis(t *testing.T) {
	err := run(context.Background(), &testkit.SyncBuffer{}, config{registrar: "sip:127.0.0.1:5060;transport=tcp",
		user: "alice", redis: "redis://[::1"})
	if err == nil || !strings.Contains(err.Error(), "-redis") {
		t.Fatalf("run: %v, want an error naming -redis", err)
	}
}
