package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

// child is one process of this program in a role, spoken to by lines: it
// prints its answers on stdout and ends when its stdin closes.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string // its stdout, line by line; closed at EOF
}

// startChild starts this program with args (a -role among them).
func startChild(args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	c := &child{cmd: exec.Command(exe, args...), lines: make(chan string, 4)}
	c.cmd.Env = append(os.Environ(), childEnv+"=1")
	c.cmd.Stderr = os.Stderr
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c, nil
}

// line returns the child's next line, waiting at most within.
func (c *child) line(within time.Duration) (string, error) {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("%s: exited without answering", c.name())
		}
		return l, nil
	case <-t.C:
		return "", fmt.Errorf("%s: no answer within %v", c.name(), within)
	}
}

// result reads the child's next line as the JSON of v.
func (c *child) result(v any, within time.Duration) error {
	l, err := c.line(within)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(l), v); err != nil {
		return fmt.Errorf("%s: %q: %w", c.name(), l, err)
	}
	return nil
}

// stop closes the child's stdin (its signal to end), returns its last line
// if it prints one within a few seconds, and reaps it (killing it if it
// lingers).
func (c *child) stop() string {
	_ = c.in.Close()
	last, _ := c.line(10 * time.Second)
	done := make(chan struct{})
	go func() {
		_ = c.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-done
	}
	return last
}

func (c *child) name() string { return strings.Join(c.cmd.Args[1:3], " ") }

// waitStdin blocks until the parent closes the process's stdin.
func waitStdin(in io.Reader) {
	_, _ = io.Copy(io.Discard, in)
}

// ready is a server child's first line: the addresses it serves.
type ready struct {
	Addrs []string `json:"addrs"`
}

// errNoAddrs is a server child that served nothing.
var errNoAddrs = errors.New("scale: server child gave no address")
