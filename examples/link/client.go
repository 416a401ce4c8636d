package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
)

// The login's errors.
var (
	errBusy      = errors.New("login: server busy")
	errDenied    = errors.New("login: denied")
	errBadAnswer = errors.New("login: unexpected answer")
)

// login is the Link's Handshake: it sends LOGIN and reads the answer. The
// Link is READY only when it returns nil. BUSY is the server's push-back
// (backoff.Overloaded: the Gate pauses for the hint), DENIED is final
// (backoff.Permanent: the Link stops), anything else a failure of this
// attempt.
func login(ctx context.Context, c *conn.Conn, user, password string) error {
	// The Link closes c when ctx ends; the deadline makes sure the read
	// returns at once.
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(c, "LOGIN %s %s\n", user, password); err != nil {
		return err
	}
	line, err := readAnswer(c)
	if err != nil {
		return err
	}
	err = parseAnswer(line)
	if err == nil {
		logf("login: %s", line)
	} else {
		logf("login: %v", err)
	}
	return err
}

// parseAnswer turns the server's answer into the Handshake's result.
func parseAnswer(line string) error {
	f := strings.Fields(line)
	switch {
	case len(f) == 2 && f[0] == "WELCOME":
		return nil
	case len(f) == 1 && f[0] == "DENIED":
		return backoff.Permanent(errDenied)
	case len(f) == 1 && f[0] == "BUSY":
		return backoff.Overloaded(errBusy, 0) // no hint: the Gate slows down
	case len(f) == 2 && f[0] == "BUSY":
		secs, err := strconv.Atoi(f[1])
		if err != nil || secs < 0 || secs > 3600 {
			break
		}
		return backoff.Overloaded(errBusy, time.Duration(secs)*time.Second)
	}
	return fmt.Errorf("%w %.80q", errBadAnswer, line)
}

// readAnswer reads one non-blank line a byte at a time: nothing after it is
// consumed, so the session reads on from the same Conn. Blank lines are
// probe answers.
func readAnswer(r io.Reader) (string, error) {
	line := make([]byte, 0, 32)
	one := make([]byte, 1)
	for len(line) < 128 {
		if _, err := io.ReadFull(r, one); err != nil {
			return "", err
		}
		if one[0] != '\n' {
			line = append(line, one[0])
		} else if t := bytes.TrimSpace(line); len(t) > 0 {
			return string(t), nil
		} else {
			line = line[:0]
		}
	}
	return "", fmt.Errorf("%w: a line longer than 128 bytes", errBadAnswer)
}

// session runs on a logged-in connection: it sends a line every 500 ms and
// counts the echoes (blank lines are the probe's answers: skipped), until
// the connection ends or ctx is cancelled.
func session(ctx context.Context, c *conn.Conn, n int) error {
	began := time.Now()
	logf("session %d: started from %v", n, c.LocalAddr())
	var echoes atomic.Int64
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) != "" {
				echoes.Add(1)
			}
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		readErr <- err
	}()
	end := func(why error) error {
		logf("session %d: ended after %.1fs with %d echoes: %v", n, time.Since(began).Seconds(), echoes.Load(), why)
		return why
	}
	// closeAndWait ends the connection and waits for the reader; its end
	// is then no news.
	closeAndWait := func() error {
		_ = c.Close()
		return <-readErr
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			_ = closeAndWait()
			return end(context.Cause(ctx))
		case err := <-readErr:
			return end(err)
		case <-tick.C:
			if _, err := fmt.Fprintf(c, "ping %d\n", i); err != nil {
				_ = closeAndWait()
				return end(err)
			}
		}
	}
}
