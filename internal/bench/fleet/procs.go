package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// workerReport is what a worker prints when its trunks (clients) are done.
type workerReport struct {
	DoneUnixNano  int64 `json:"done_unix_nano"`  // the last trunk back (client admitted)
	FirstUnixNano int64 `json:"first_unix_nano"` // SIP: the first trunk back
	Attempts      int   `json:"attempts"`        // admissions by the gate (window: attempts)
	Rejected      int   `json:"rejected"`        // window: rejections
	Calls         int   `json:"calls"`           // calls to Redis
	MaxWaitNs     int64 `json:"max_wait_ns"`     // the slowest call
	Stuck         int   `json:"stuck"`
	Undetected    int   `json:"undetected"` // SIP: trunks that never lost their registration
	// Trace is the fleet pace versions this worker saw and the pauses it
	// told, from one second before the restore (-trace).
	Trace []traceNote `json:"trace,omitempty"`
}

// workers are the worker processes of one herd, spoken to one line at a time
// on their stdin and stdout.
type workers struct {
	cmds  []*exec.Cmd
	ins   []io.WriteCloser
	lines []chan string // each worker's stdout, line by line; closed at EOF
}

// workerArgs are the flags a worker of strategy number id gets.
func workerArgs(o *options, strategy string, id int, target, key string) []string {
	return []string{"-worker", strategy, "-id", strconv.Itoa(id), "-target", target,
		"-redis", o.redis, "-fleet-key", key, "-trunks", strconv.Itoa(o.trunks),
		"-capacity", strconv.FormatFloat(o.capacity, 'g', -1, 64), "-retry-after", o.retryAfter.String(),
		"-keepalive", o.keepAlive.String(), "-keepalive-timeout", o.kaTimeout.String(),
		"-timeout", o.timeout.String(), "-server", o.server, "-trace=" + strconv.FormatBool(o.trace)}
}

// startWorkers starts the processes (cmd makes worker i's command) and waits
// until each has said "ready", at most within.
func startWorkers(procs int, cmd func(i int) *exec.Cmd, within time.Duration) (*workers, error) {
	ws := &workers{}
	for i := range procs {
		c := cmd(i)
		c.Env = append(os.Environ(), workerEnv+"=1")
		c.Stderr = os.Stderr
		in, err := c.StdinPipe()
		if err != nil {
			ws.kill()
			return nil, err
		}
		out, err := c.StdoutPipe()
		if err != nil {
			ws.kill()
			return nil, err
		}
		if err := c.Start(); err != nil {
			ws.kill()
			return nil, err
		}
		lines := make(chan string, 4)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		ws.cmds, ws.ins, ws.lines = append(ws.cmds, c), append(ws.ins, in), append(ws.lines, lines)
	}
	if err := ws.expect("ready", within); err != nil {
		ws.kill()
		return nil, err
	}
	return ws, nil
}

// expect reads one line from every worker, which must be want.
func (ws *workers) expect(want string, within time.Duration) error {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for i, lines := range ws.lines {
		select {
		case line, ok := <-lines:
			if !ok || line != want {
				return fmt.Errorf("worker %d said %q (ok %v), want %q", i, line, ok, want)
			}
		case <-deadline.C:
			return fmt.Errorf("worker %d: no %q within %v", i, want, within)
		}
	}
	return nil
}

// tell sends line to every worker.
func (ws *workers) tell(line string) {
	for _, in := range ws.ins {
		_, _ = io.WriteString(in, line+"\n")
	}
}

// reports reads each worker's JSON report, within; a worker that has none
// by then is left out.
func (ws *workers) reports(within time.Duration) []workerReport {
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	var out []workerReport
	for i, lines := range ws.lines {
		select {
		case line, ok := <-lines:
			var w workerReport
			if err := json.Unmarshal([]byte(line), &w); !ok || err != nil {
				fmt.Fprintf(os.Stderr, "fleet: worker %d: no report (%q)\n", i, strings.TrimSpace(line))
				continue
			}
			out = append(out, w)
		case <-deadline.C:
			return out
		}
	}
	return out
}

// kill ends the workers at once: a worker that stopped its trunks would
// unregister them, load the registrar would count.
func (ws *workers) kill() {
	for i, c := range ws.cmds {
		_ = ws.ins[i].Close()
		_ = c.Process.Kill()
		_ = c.Wait()
	}
}
