package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"
)

// naiveFleet is what a gateway without relink does: sipgo with its defaults
// (one UserAgent, one Client, so one pooled TCP connection per registrar
// address), REGISTER answered with sipgo's DoDigestAuth (a fresh challenge
// every time), a refresh at 90 % of the granted expiry, and on any failure —
// an error, a timeout, a 503 — another attempt at once.
type naiveFleet struct {
	ua        *sipgo.UserAgent
	client    *sipgo.Client
	registrar sipmsg.Uri // the registrar (here: the freeze proxy in front of it)
	domain    string
	password  string
	trunks    []*naiveTrunk
	marks     *marks
	wg        sync.WaitGroup
}

// naiveTrunk is one registration of the naive gateway.
type naiveTrunk struct {
	user     string
	believes atomic.Bool   // the gateway thinks it is registered
	attempts atomic.Uint64 // REGISTER transactions sent
	rec      trunkRec
}

func newNaiveFleet(n int, hostPort, domain, password string, m *marks) (*naiveFleet, error) {
	ua, err := sipgo.NewUA() // sipgo's defaults
	if err != nil {
		return nil, fmt.Errorf("naive: %w", err)
	}
	client, err := sipgo.NewClient(ua)
	if err != nil {
		ua.Close()
		return nil, fmt.Errorf("naive: %w", err)
	}
	var u sipmsg.Uri
	if err := sipmsg.ParseUri("sip:"+hostPort+";transport=tcp", &u); err != nil {
		ua.Close()
		return nil, fmt.Errorf("naive: %w", err)
	}
	f := &naiveFleet{ua: ua, client: client, registrar: u, domain: domain, password: password, marks: m}
	for i := range n {
		t := &naiveTrunk{user: fmt.Sprintf("naive%04d", i)}
		t.rec.name, t.rec.tx = t.user, t.attempts.Load
		f.trunks = append(f.trunks, t)
	}
	return f, nil
}

// start runs every trunk until ctx ends.
func (f *naiveFleet) start(ctx context.Context) {
	for _, t := range f.trunks {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.run(ctx, t)
		}()
	}
}

// stop waits for the trunks (after ctx ended) and closes the UserAgent. The
// naive gateway does not unregister: its bindings expire by themselves.
func (f *naiveFleet) stop() {
	f.wg.Wait()
	f.client.Close()
	f.ua.Close()
}

// believed counts the trunks that think they are registered.
func (f *naiveFleet) believed() int {
	n := 0
	for _, t := range f.trunks {
		if t.believes.Load() {
			n++
		}
	}
	return n
}

func (f *naiveFleet) run(ctx context.Context, t *naiveTrunk) {
	callID := rand.Text()
	fromTag := rand.Text()[:16]
	var cseq uint32
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for ctx.Err() == nil {
		grant, err := f.register(ctx, t, callID, fromTag, &cseq)
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		if err != nil {
			// Any failure: try again at once.
			if t.believes.Swap(false) {
				t.rec.lost(now, f.marks)
			}
			last := fmt.Sprintf("failed at %+.1f s (%v)", now.Sub(f.marks.start).Seconds(), err)
			t.rec.last.Store(&last)
			continue
		}
		t.believes.Store(true)
		t.rec.registered(now, f.marks)
		timer.Reset(grant * 9 / 10)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// register sends one REGISTER and, when challenged, sipgo's DoDigestAuth
// answer; it returns the granted expiry.
func (f *naiveFleet) register(ctx context.Context, t *naiveTrunk, callID, fromTag string, cseq *uint32) (time.Duration, error) {
	aor := sipmsg.Uri{Scheme: "sip", User: t.user, Host: f.domain}
	req := sipmsg.NewRequest(sipmsg.REGISTER, f.registrar)
	req.SetTransport("TCP")
	from := &sipmsg.FromHeader{Address: aor}
	from.Params.Add("tag", fromTag)
	cid := sipmsg.CallIDHeader(callID)
	*cseq++
	req.AppendHeader(from)
	req.AppendHeader(&sipmsg.ToHeader{Address: aor})
	req.AppendHeader(&cid)
	req.AppendHeader(&sipmsg.CSeqHeader{SeqNo: *cseq, MethodName: sipmsg.REGISTER})
	req.AppendHeader(sipmsg.NewHeader("Contact", "<sip:"+t.user+"@127.0.0.1:5060;transport=tcp>"))
	req.AppendHeader(sipmsg.NewHeader("Expires", "3600"))
	t.attempts.Add(1)
	res, err := f.client.Do(ctx, req)
	if err != nil {
		return 0, err
	}
	if res.StatusCode == sipmsg.StatusUnauthorized || res.StatusCode == sipmsg.StatusProxyAuthRequired {
		t.attempts.Add(1)
		res, err = f.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: t.user, Password: f.password})
		*cseq = req.CSeq().SeqNo
		if err != nil {
			return 0, err
		}
	}
	if res.StatusCode != sipmsg.StatusOK {
		return 0, fmt.Errorf("naive: %d %s", res.StatusCode, res.Reason)
	}
	grant := 3600 * time.Second
	if c := res.Contact(); c != nil {
		if v, ok := c.Params.Get("expires"); ok {
			if s, err := strconv.Atoi(v); err == nil && s > 0 {
				grant = time.Duration(s) * time.Second
			}
		}
	}
	return grant, nil
}
