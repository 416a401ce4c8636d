package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// The parent and the measured client speak JSON lines: one command on the
// client's stdin, one reply on its stdout.

// command is what the parent asks of the client.
type command struct {
	// Op is cut (a fault starts: its window opens for the units it
	// affects), clear (it was cleared), status, sample, registered or
	// stop.
	Op string `json:"op"`
	// SIP and Links say which units the fault affects (cut).
	SIP   bool `json:"sip,omitempty"`
	Links bool `json:"links,omitempty"`
	// Profile, with sample, names the heap and goroutine profiles written
	// into the client's -pprof directory ("" writes none).
	Profile string `json:"profile,omitempty"`
}

// reply is the client's answer; which fields are set depends on the op.
type reply struct {
	Err string `json:"err,omitempty"`
	// ready and status.
	Registered int `json:"registered"`
	Ready      int `json:"ready"`
	// status: units recovered from the current fault (all of them when no
	// fault affects them), of Total; LastBack is when the last affected
	// unit came back (Unix ns, 0 if none).
	Recovered   int   `json:"recovered,omitempty"`
	Total       int   `json:"total,omitempty"`
	LastBack    int64 `json:"last_back,omitempty"`
	FalseDeaths int   `json:"false_deaths,omitempty"`
	FlowDeaths  int   `json:"flow_deaths,omitempty"`
	// sample.
	Mem *memSample `json:"mem,omitempty"`
	// registered: the indexes of the trunks in state Registered.
	Trunks []int `json:"trunks,omitempty"`
	// stop: units whose Run did not return within the bound.
	Stuck int    `json:"stuck,omitempty"`
	Note  string `json:"note,omitempty"`
}

// memSample is what the client process holds after a GC.
type memSample struct {
	Heap       uint64 `json:"heap"` // HeapInuse + StackInuse
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	HeapAlloc  uint64 `json:"heap_alloc"` // live objects' bytes
	Goroutines int    `json:"goroutines"`
	FDs        int    `json:"fds"`
}

// childEnv marks this program started as the measured client (the test
// binary checks it to run main).
const childEnv = "RELINK_SOAK_CHILD"

// clientProc is the measured client process, seen from the parent.
type clientProc struct {
	cmd     *exec.Cmd
	enc     *json.Encoder
	stdin   io.WriteCloser
	replies chan reply
	waited  chan struct{}
}

// startClient starts cmd (this program with -role client, perhaps through
// ip netns exec) and waits up to within for its first reply (ready).
func startClient(cmd *exec.Cmd, within time.Duration) (*clientProc, reply, error) {
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, reply{}, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, reply{}, err
	}
	if err := cmd.Start(); err != nil {
		return nil, reply{}, fmt.Errorf("start client: %w", err)
	}
	c := &clientProc{cmd: cmd, enc: json.NewEncoder(in), stdin: in, replies: make(chan reply), waited: make(chan struct{})}
	go c.read(out)
	r, err := c.next(within)
	if err == nil && r.Err != "" {
		err = errors.New("client: " + r.Err)
	}
	if err != nil {
		c.close()
		return nil, r, err
	}
	return c, r, nil
}

// read decodes the client's replies until its stdout ends, then reaps it.
func (c *clientProc) read(out io.Reader) {
	defer close(c.waited)
	defer close(c.replies)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var r reply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			r.Err = fmt.Sprintf("bad reply %q: %v", sc.Text(), err)
		}
		c.replies <- r
	}
	_ = c.cmd.Wait()
}

// next waits up to within for the client's next reply.
func (c *clientProc) next(within time.Duration) (reply, error) {
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case r, ok := <-c.replies:
		if !ok {
			return r, errors.New("soak: client exited")
		}
		return r, nil
	case <-t.C:
		return reply{}, fmt.Errorf("soak: client gave no reply within %v", within)
	}
}

// ask sends cmd and waits up to within for the reply.
func (c *clientProc) ask(cmd command, within time.Duration) (reply, error) {
	if err := c.enc.Encode(cmd); err != nil {
		return reply{}, fmt.Errorf("soak: %s: %w", cmd.Op, err)
	}
	r, err := c.next(within)
	if err == nil && r.Err != "" {
		err = fmt.Errorf("soak: client %s: %s", cmd.Op, r.Err)
	}
	return r, err
}

// close ends the client: its stdin closes (it exits), and it is killed if
// it has not after 10 s.
func (c *clientProc) close() {
	_ = c.stdin.Close()
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case _, ok := <-c.replies:
			if !ok {
				<-c.waited
				return
			}
		case <-t.C:
			_ = c.cmd.Process.Kill() // the replies drain and end with its stdout
		}
	}
}
