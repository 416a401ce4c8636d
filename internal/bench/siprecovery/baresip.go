package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/internal/netns"
)

// baresipHorizon is how long baresip's own timers need after the restore:
// libre's sipreg (src/sipreg/reg.c, response_handler and failwait) retries a
// failed REGISTER after failwait(failc) = min(1800 s, 30 s × 2^failc) ×
// (0.5..1.0), so 30–60 s after the first failure and 60–120 s more after the
// second; it ignores Retry-After.
const baresipHorizon = 200 * time.Second

// baresipModel describes the baresip row.
const baresipModel = "baresip 1.0.0 (Debian baresip-core) as a real client: one process, N accounts (regint 3600) " +
	"over TCP; libre's sipreg retries a failure after 30–60 s, doubling, Retry-After ignored; " +
	"told of the loss: SIGKILL and a new baresip with the same accounts"

// baresipClients is baresip 1.0 (Debian baresip-core) as a real client: one
// process with the N trunks as accounts of one accounts file, in a config
// directory the bench writes, run in the client namespace (the process
// inherits the namespace of this worker). Baresip 1.0's menu has no command
// to re-register an account (no uareg), so the bench tells it of the loss as
// a supervisor would: SIGKILL (no unregistration) and a new baresip with the
// same accounts. Each account's registrations are read from baresip's own
// output ("tN@host: {0/TCP/v4} 200 OK ...", "reg: sip:tN@host: 503 ...").
type baresipClients struct {
	bin, dir string
	n        int
	k        interface{ registersSeen() uint64 }
	rec      *recorder

	mu      sync.Mutex
	cmd     *exec.Cmd
	outDone chan struct{}
	up      []bool
	lost    bool

	upN, oks, fails, rejected atomic.Int64
	starts                    atomic.Int64
}

// kamCounter reads the REGISTERs Kamailio received (baresip does not print
// its challenged requests).
type kamCounter struct{ s *site }

func (c kamCounter) registersSeen() uint64 {
	st, err := c.s.k.Stats()
	if err != nil {
		return 0
	}
	return uint64(st.Registers)
}

func newBaresip(o *options, s *site, rec *recorder) (*baresipClients, error) {
	bin, err := exec.LookPath(o.baresip)
	if err != nil {
		return nil, fmt.Errorf("%w (apt-get install baresip-core): %w", errNoBaresip, err)
	}
	dir, err := os.MkdirTemp("", "relink-baresip-")
	if err != nil {
		return nil, err
	}
	if err := writeBaresipConfig(dir, o.n, s); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &baresipClients{bin: bin, dir: dir, n: o.n, k: kamCounter{s}, rec: rec, up: make([]bool, o.n)}, nil
}

// writeBaresipConfig writes config and accounts: baresip's defaults, no
// audio, the account module only; one account per trunk, digest password,
// registration interval 3600 s.
func writeBaresipConfig(dir string, n int, s *site) error {
	hostport := strings.TrimSuffix(strings.TrimPrefix(s.uri, "sip:"), ";transport=tcp")
	listen := "127.0.0.1:0"
	if strings.HasPrefix(hostport, netns.ServerIP.String()+":") {
		listen = netns.ClientIP.String() + ":0"
	}
	config := "poll_method\t\tepoll\n" +
		"sip_listen\t\t" + listen + "\n" +
		"module_path\t\t/usr/lib/baresip/modules\n" +
		"module\t\t\taccount.so\n" +
		"audio_player\t\tnone\naudio_source\t\tnone\naudio_alert\t\tnone\n"
	var acc strings.Builder
	for i := range n {
		fmt.Fprintf(&acc, "<sip:t%d@%s;transport=tcp>;auth_pass=%s;regint=3600\n", i, hostport, s.k.Password())
	}
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(config), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "accounts"), []byte(acc.String()), 0o644)
}

// launch starts a baresip process and the reader of its output.
func (c *baresipClients) launch() error {
	cmd := exec.Command(c.bin, "-f", c.dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.read(out)
	}()
	c.mu.Lock()
	c.cmd, c.outDone = cmd, done
	c.mu.Unlock()
	c.starts.Add(1)
	return nil
}

// kill ends the running baresip with SIGKILL and waits for it.
func (c *baresipClients) kill() {
	c.mu.Lock()
	cmd, done := c.cmd, c.outDone
	c.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
	_ = cmd.Wait()
}

var (
	ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*m`)
	// "t7@198.18.0.1: {0/TCP/v4} 200 OK (kamailio ...) [1 binding]"
	baresipOK = regexp.MustCompile(`^t(\d+)@\S+: \{\d+/\w+/v\d\} (\d{3}) `)
	// "reg: sip:t7@198.18.0.1:5060: 503 Service Unavailable (...)"
	baresipFail = regexp.MustCompile(`^reg: sip:t(\d+)@\S+: (.*)$`)
)

// read follows baresip's output until it ends.
func (c *baresipClients) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		c.line(ansiEscape.ReplaceAllString(sc.Text(), ""), time.Now())
	}
}

// line records one line of baresip's output.
func (c *baresipClients) line(l string, at time.Time) {
	if m := baresipOK.FindStringSubmatch(l); m != nil {
		i, err := strconv.Atoi(m[1])
		if err != nil || i < 0 || i >= c.n || !strings.HasPrefix(m[2], "2") {
			return
		}
		c.oks.Add(1)
		c.mu.Lock()
		first := !c.up[i]
		c.up[i] = true
		lost := c.lost
		c.mu.Unlock()
		if first {
			c.upN.Add(1)
			if lost {
				c.rec.back(i, at)
			}
		}
		return
	}
	if m := baresipFail.FindStringSubmatch(l); m != nil {
		c.fails.Add(1)
		if strings.HasPrefix(m[2], "503") {
			c.rejected.Add(1)
		}
	}
}

func (c *baresipClients) start(ctx context.Context) error {
	if err := c.launch(); err != nil {
		return err
	}
	return waitAll(ctx, c.n, c.registered)
}

// lose is the supervisor's restart: every account is lost, baresip is
// killed and started again.
func (c *baresipClients) lose() {
	c.mu.Lock()
	if c.lost {
		c.mu.Unlock()
		return
	}
	c.lost = true
	now := time.Now()
	for i := range c.up {
		c.up[i] = false
	}
	c.mu.Unlock()
	c.upN.Store(0)
	for i := range c.n {
		c.rec.lost(i, now)
	}
	c.kill()
	if err := c.launch(); err != nil {
		fmt.Fprintln(os.Stderr, "siprecovery: baresip restart:", err)
	}
}

// transactions is counted at Kamailio: baresip does not print the
// REGISTERs it answers a challenge with.
func (c *baresipClients) transactions() uint64 { return c.k.registersSeen() }

func (c *baresipClients) registered() int { return int(c.upN.Load()) }

func (c *baresipClients) trace() string {
	return fmt.Sprintf("baresip (started %d times): %d 200 OK, %d failures, %d of them 503",
		c.starts.Load(), c.oks.Load(), c.fails.Load(), c.rejected.Load())
}

func (c *baresipClients) gate() (string, int) { return "", 0 }

func (c *baresipClients) stop() {
	c.kill()
	os.RemoveAll(c.dir)
}

// errNoBaresip is wrapped when the baresip binary is missing.
var errNoBaresip = errors.New("baresip not installed")
