package conn_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/netns"
)

// No false positives: 60 s of echo traffic through a path that drops 10 %
// of the packets at random, in each direction (nft numgen), and no flow is
// declared dead.
//
// Two kinds of flow run side by side:
//   - busy: back-to-back echoes with the zero Config (kernel keepalive and
//     TCP_USER_TIMEOUT at their defaults, no application probe);
//   - bursty: 2 s of echoes, then 11–12 s of silence, with the zero Config
//     plus conn.CRLF at the default probe timing (10 s / 5 s), so that a
//     probe goes out in every silence and must survive the loss.
//
// Under 10 % loss both ways a round trip fails with probability 0.19; TCP
// retransmits at its RTO, so data gets through, late. A detector that
// counted a single late answer as death would fail here.
func TestLossNoFalsePositives(t *testing.T) {
	t.Parallel()
	const lossPercent = 10
	duration := 60 * time.Second
	if testing.Short() {
		duration = 10 * time.Second
	}
	p := netns.ForTest(t)
	port := hoEchoServer(t, p)
	restore, err := p.Loss(port, lossPercent)
	if err != nil {
		t.Fatal(err)
	}
	defer restore()

	var probes atomic.Int64
	countingCRLF := conn.ProberFunc(func(w io.Writer) error {
		probes.Add(1)
		return conn.CRLF.Probe(w)
	})
	type flow struct {
		name   string
		cfg    conn.Config
		bursty bool
	}
	var flows []flow
	for i := range 4 {
		flows = append(flows, flow{name: fmt.Sprintf("busy-%d", i)})
		flows = append(flows, flow{name: fmt.Sprintf("bursty-%d", i), cfg: conn.Config{Probe: countingCRLF}, bursty: true})
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	results := make([]string, len(flows))
	failed := make([]error, len(flows))
	for i, f := range flows {
		d := conn.Dialer{Config: f.cfg, Dial: p.DialContext}
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := d.DialContext(dctx, "tcp", p.ServerAddr(port)) // SYNs may be lost too
		dcancel()
		if err != nil {
			t.Fatalf("%s: dial: %v", f.name, err)
		}
		defer c.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := lossEchoLoop(ctx, c, f.bursty)
			if err != nil {
				failed[i] = err
				return
			}
			select {
			case <-c.Done():
				failed[i] = fmt.Errorf("declared dead: %w", c.Err())
				return
			default:
			}
			info := hoTCPInfo(t, c)
			results[i] = fmt.Sprintf("%s: %d echoes, %d retransmissions", f.name, n, info.Total_retrans)
		}()
	}
	wg.Wait()
	for i, err := range failed {
		if err != nil {
			t.Errorf("%s: %v", flows[i].name, err)
		}
	}
	for _, r := range results {
		t.Log(r)
	}
	t.Logf("%d probes sent by the bursty flows, none unanswered for 5 s", probes.Load())
	if probes.Load() == 0 && !testing.Short() {
		t.Error("the bursty flows sent no probe: the test did not exercise probing")
	}
}

// lossEchoLoop echoes numbered 512-byte messages on c until ctx ends, checking
// each echo (and skipping the echoed CRLF probes between them), and returns how many round trips completed. A bursty loop
// pauses 11–12 s after each 2 s of traffic. An echo that does not arrive is
// not waited for past ctx: the Conn must have declared the flow dead for
// the read to fail, and that is the error returned.
func lossEchoLoop(ctx context.Context, c *conn.Conn, bursty bool) (int, error) {
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReader(c)
	msg := make([]byte, 512)
	got := make([]byte, 512)
	n := 0
	burstStart := time.Now()
	pause := time.NewTimer(0)
	<-pause.C
	for ctx.Err() == nil {
		binary.BigEndian.PutUint64(msg, uint64(n))
		if _, err := c.Write(msg); err != nil {
			return n, fmt.Errorf("write %d: %w", n, err)
		}
		if err := lossReadEcho(r, got); err != nil {
			if ctx.Err() != nil {
				select {
				case <-c.Done():
				default:
					return n, nil // stopped by the test's deadline
				}
			}
			return n, fmt.Errorf("read %d: %w", n, err)
		}
		if !bytes.Equal(got, msg) {
			return n, fmt.Errorf("echo %d corrupted", n)
		}
		n++
		if bursty && time.Since(burstStart) > 2*time.Second {
			pause.Reset(11*time.Second + time.Duration(n%10)*100*time.Millisecond)
			select {
			case <-pause.C:
			case <-ctx.Done():
			}
			burstStart = time.Now()
		}
	}
	return n, nil
}

// lossReadEcho reads one echoed message into got, skipping the CR and LF bytes
// of echoed probes before it: a message's first byte is the high byte of
// its number, always 0 here.
func lossReadEcho(r *bufio.Reader, got []byte) error {
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		if b != '\r' && b != '\n' {
			got[0] = b
			break
		}
	}
	_, err := io.ReadFull(r, got[1:])
	return err
}
