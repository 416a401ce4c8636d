package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/relinkgo/relink/sip"
)

// workerEnv holds a worker's configuration (JSON): when it is set, the
// program (or the test binary) runs as one worker process.
const workerEnv = "RELINK_RESTORE_WORKER"

// workerConfig is one worker's trunk.
type workerConfig struct {
	Registrar      string        `json:"registrar"`
	AOR            string        `json:"aor"`
	Password       string        `json:"password"`
	KeepAlive      time.Duration `json:"keepalive"`
	Timeout        time.Duration `json:"timeout"`
	RequestTimeout time.Duration `json:"request_timeout"`
	LogPath        string        `json:"log_path"` // the trunk's debug log; "" none
}

// stateLine is what a worker prints on each state change of its trunk.
type stateLine struct {
	From string `json:"from"`
	To   string `json:"to"`
	At   int64  `json:"at"` // unix nanoseconds
	Err  string `json:"err,omitempty"`
}

// runWorker is one process with one trunk: it prints a stateLine per state
// change on stdout and runs until its stdin closes. It returns the exit
// status.
func runWorker(spec string, stdin io.Reader, stdout io.Writer) int {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "restore worker:", err)
		return 2
	}
	logger := slog.New(slog.DiscardHandler)
	if cfg.LogPath != "" {
		f, err := os.Create(cfg.LogPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, "restore worker:", err)
			return 2
		}
		defer f.Close()
		logger = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	// sipgo logs through the default logger ("TCP ref went negative"...):
	// into the trunk's log, not the bench's output.
	slog.SetDefault(logger)
	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "restore worker:", err)
		return 2
	}
	defer ua.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(stdout)
	t, err := sip.NewTrunk(ua, sip.TrunkConfig{
		Registrars: []string{cfg.Registrar}, AOR: cfg.AOR, Password: cfg.Password,
		KeepAlive: cfg.KeepAlive, KeepAliveTimeout: cfg.Timeout, RequestTimeout: cfg.RequestTimeout,
		UnregisterTimeout: -1, // the registrar is stopped after the round
		Logger:            logger,
		OnStateChange: func(sc sip.TrunkStateChange) {
			l := stateLine{From: sc.From.String(), To: sc.To.String(), At: sc.At.UnixNano()}
			if sc.Err != nil {
				l.Err = sc.Err.Error()
			}
			mu.Lock()
			_ = enc.Encode(l)
			mu.Unlock()
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "restore worker:", err)
		return 2
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// The parent closes our stdin to stop us.
		_, _ = io.Copy(io.Discard, bufio.NewReader(stdin))
		cancel()
	}()
	_ = t.Run(ctx)
	return 0
}
