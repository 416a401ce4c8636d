package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/internal/ctxtime"
	"github.com/relinkgo/relink/internal/netns"
	"github.com/relinkgo/relink/internal/testkit"
)

// naiveWorst is the zero-delay baseline's name: the worst case, no real stack.
const naiveWorst = "naive-worst-case"

// allStrategies are the strategies in their default order.
var allStrategies = []string{"relink", "relink-rate", "diago", "pjsip-like", "baresip", naiveWorst}

// isRelink tells relink's strategies from the baselines.
func isRelink(s string) bool { return s == "relink" || s == "relink-rate" }

// policy returns the recovery policy of a Go baseline.
func (o *options) policy(strategy string) policy {
	switch strategy {
	case "diago":
		return diagoPolicy{restart: o.diagoRestart}
	case "pjsip-like":
		return pjsipPolicy{interval: o.pjsipRetry, spread: o.pjsipSpread, maxRetries: 10}
	}
	return naivePolicy{}
}

// capFor is how long after the restore a strategy is watched: -cap for
// relink; for a baseline -baseline-cap, or by default -cap or longer when
// the baseline's own timers need it.
func (o *options) capFor(strategy string) time.Duration {
	switch {
	case isRelink(strategy):
		return o.capAfter
	case o.baselineCap > 0:
		return o.baselineCap
	case strategy == "baresip":
		return max(o.capAfter, baresipHorizon)
	}
	return max(o.capAfter, o.policy(strategy).horizon())
}

// policy is how a gateway without relink registers a trunk again once it
// knows the registration is lost: one per baseline strategy.
type policy interface {
	// recover sends REGISTERs for r until one succeeds (true) or ctx ends
	// or the baseline gives up (false).
	recover(ctx context.Context, r *testkit.Registerer, seen *counts) bool
	// model describes the baseline and its parameters for the result.
	model() string
	// horizon is how long after the restore the baseline needs for its own
	// timers to have acted (the cap is at least this).
	horizon() time.Duration
}

// counts are what the baselines' trunks saw.
type counts struct {
	rejected atomic.Uint64 // 503s
	gaveUp   atomic.Uint64 // the stack gave up (diago's Register returned; Asterisk's max_retries)
}

// retryAfter is a response's Retry-After in whole seconds (0: none).
func retryAfter(res *sipmsg.Response) time.Duration {
	if res == nil {
		return 0
	}
	h := res.GetHeader("Retry-After")
	if h == nil {
		return 0
	}
	v, _, _ := strings.Cut(strings.TrimSpace(h.Value()), ";")
	s, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || s <= 0 {
		return 0
	}
	return time.Duration(s) * time.Second
}

func ok2xx(res *sipmsg.Response) bool {
	return res != nil && res.StatusCode >= 200 && res.StatusCode < 300
}

// naivePolicy is the worst case no real stack does: on any failure (a 503
// whose Retry-After it ignores, a timeout) a new REGISTER at once.
type naivePolicy struct{}

func (naivePolicy) recover(ctx context.Context, r *testkit.Registerer, seen *counts) bool {
	for ctx.Err() == nil {
		res, err := r.Register(ctx, 3600)
		if err != nil {
			continue
		}
		if ok2xx(res) {
			return true
		}
		if res.StatusCode == sipmsg.StatusServiceUnavailable {
			seen.rejected.Add(1)
		}
	}
	return false
}

func (naivePolicy) model() string {
	return "worst case, not a real stack: zero delay between REGISTERs, Retry-After ignored"
}

func (naivePolicy) horizon() time.Duration { return 0 }

// diagoPolicy is diago v0.42.1's registration loop, reimplemented (importing
// diago would bring pion, opus and a sipgo other than v1.7.3 into go.mod):
//   - diago.go, (*Diago).Register: after t.Register, loop on t.QualifyLoop;
//     an error that is a RegisterResponseError with 401/407, 501–599 (so a
//     503) or an odd code ends Register with that error; any other error (a
//     timeout, a transport error, another 4xx, a 500) sets t.expiry to the
//     response's Retry-After, else 5 s, and loops.
//   - register_transaction.go, (*RegisterTransaction).QualifyLoop and
//     calcRetry: the next REGISTER comes after int(0.75 × expiry) whole
//     seconds, 30 s when that is 0; doRequest sends the REGISTER and answers
//     a 401/407 once with DoDigestAuth (a fresh challenge: testkit's
//     Registerer with FreshChallenge does the same on the wire).
//
// What to do when Register returns is the application's: diago's own
// examples/register exits. This baseline's application calls Register again
// after restart (5 s, diago's own default wait), as a supervisor would.
type diagoPolicy struct{ restart time.Duration }

func (p diagoPolicy) recover(ctx context.Context, r *testkit.Registerer, seen *counts) bool {
	// The refresh fired (the bench tells the trunk its binding is lost):
	// one pass of reregisterLoop's body, then Register's error handling.
	for ctx.Err() == nil {
		res, err := r.Register(ctx, 3600)
		if err == nil && ok2xx(res) {
			return true
		}
		if err == nil && res.StatusCode == sipmsg.StatusServiceUnavailable {
			seen.rejected.Add(1)
		}
		if err == nil && diagoFatal(res.StatusCode) {
			// Register returned; the application starts it again: a new
			// RegisterTransaction whose first register() must succeed, or
			// Register returns again.
			seen.gaveUp.Add(1)
			if !ctxtime.Sleep(ctx, p.restart) {
				return false
			}
			continue
		}
		wait := 5 * time.Second
		if ra := retryAfter(res); err == nil && ra > 0 {
			wait = ra
		}
		if !ctxtime.Sleep(ctx, diagoCalcRetry(wait)) {
			return false
		}
	}
	return false
}

// diagoFatal is diago's (*Diago).Register switch on a RegisterResponseError.
func diagoFatal(code int) bool {
	switch {
	case code == 401 || code == 407:
		return true
	case code > 500 && code < 600:
		return true
	case code < 200 || code > 699:
		return true
	}
	return false
}

// diagoCalcRetry is (*RegisterTransaction).calcRetry without RetryInterval.
func diagoCalcRetry(expiry time.Duration) time.Duration {
	retry := time.Duration(expiry.Seconds()*0.75) * time.Second
	if retry == 0 {
		retry = 30 * time.Second
	}
	return retry
}

func (p diagoPolicy) model() string {
	return fmt.Sprintf("diago v0.42.1 (*Diago).Register loop, reimplemented: refresh at 0.75 × Expires; "+
		"timeout/transport error: again after int(0.75 × (Retry-After or 5 s)) s; 401/407/501-599 end Register, "+
		"which the application calls again after %v", p.restart)
}

func (p diagoPolicy) horizon() time.Duration { return 30*time.Second + 32*time.Second + p.restart }

// pjsipPolicy is Asterisk's res_pjsip_outbound_registration (on pjsip's
// regc) as configured by default, with pjsua's random spread:
//   - a transport that shuts down re-registers at once
//     (reregister_immediately_cb): the bench's loss notice;
//   - handle_registration_response: a response with Retry-After is retried
//     after it; otherwise a temporal failure (408 and no response, 500, 502,
//     503, 504, 6xx) after retry_interval (default 60 s), at most
//     max_retries (default 10) times, then the registration stops;
//   - pjsua's reg_retry_random_interval (default 10 s) spreads each retry
//     by a random 0..spread (Asterisk alone retries in lockstep).
type pjsipPolicy struct {
	interval, spread time.Duration
	maxRetries       int
}

func (p pjsipPolicy) recover(ctx context.Context, r *testkit.Registerer, seen *counts) bool {
	retries := 0
	for ctx.Err() == nil {
		res, err := r.Register(ctx, 3600)
		if err == nil && ok2xx(res) {
			return true
		}
		if err == nil && res.StatusCode == sipmsg.StatusServiceUnavailable {
			seen.rejected.Add(1)
		}
		wait := retryAfter(res)
		if err != nil {
			res = nil
		}
		if wait == 0 {
			if !pjsipTemporal(res) || retries == p.maxRetries {
				seen.gaveUp.Add(1)
				return false
			}
			retries++
			wait = p.interval
		}
		if p.spread > 0 {
			wait += rand.N(p.spread)
		}
		if !ctxtime.Sleep(ctx, wait) {
			return false
		}
	}
	return false
}

// pjsipTemporal is sip_outbound_registration_is_temporal ("shamelessly
// taken from pjsua"), with auth_rejection_permanent on (the default); no
// response at all is pjsip's 408.
func pjsipTemporal(res *sipmsg.Response) bool {
	if res == nil {
		return true
	}
	switch c := int(res.StatusCode); {
	case c == 408, c == 500, c == 502, c == 503, c == 504, c >= 600 && c < 700:
		return true
	}
	return false
}

func (p pjsipPolicy) model() string {
	return fmt.Sprintf("Asterisk res_pjsip_outbound_registration defaults (retry_interval %v, max_retries %d, "+
		"Retry-After honoured per trunk) + pjsua reg_retry_random_interval spread 0..%v; re-register at once on transport loss",
		p.interval, p.maxRetries, p.spread)
}

func (p pjsipPolicy) horizon() time.Duration { return 2 * (p.interval + p.spread) }

// baselineClients is a gateway without relink: sipgo's UserAgent and Client
// with their defaults; each trunk REGISTERs with digest (testkit's
// Registerer, a fresh challenge every time, as sipgo's DoDigestAuth) and
// recovers as its policy says.
type baselineClients struct {
	pol     policy
	ua      *sipgo.UserAgent
	client  *sipgo.Client
	rec     *recorder
	regs    []*testkit.Registerer
	lostCh  chan struct{}
	lostOne sync.Once
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	seen    counts
	up      atomic.Int64
}

func newBaseline(o *options, s *site, rec *recorder, pol policy) (*baselineClients, error) {
	ua, err := sipgo.NewUA()
	if err != nil {
		return nil, err
	}
	client, err := sipgo.NewClient(ua)
	if err != nil {
		ua.Close()
		return nil, err
	}
	host := "127.0.0.1"
	if strings.HasPrefix(s.uri, "sip:"+netns.ServerIP.String()+":") {
		host = netns.ClientIP.String()
	}
	c := &baselineClients{pol: pol, ua: ua, client: client, rec: rec, lostCh: make(chan struct{})}
	for i := range o.n {
		user := "t" + strconv.Itoa(i)
		r, err := testkit.NewRegisterer(testkit.RegisterConfig{
			Client: client, Registrar: s.uri, User: user, Password: s.k.Password(), Domain: s.k.Realm(),
			Contact:        "sip:" + user + "@" + host + ";transport=tcp",
			CallID:         fmt.Sprintf("base-%d-%d", i, time.Now().UnixNano()),
			FreshChallenge: true,
		})
		if err != nil {
			ua.Close()
			return nil, err
		}
		c.regs = append(c.regs, r)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c, nil
}

func (c *baselineClients) start(ctx context.Context) error {
	for i := range c.regs {
		c.wg.Add(1)
		go c.trunk(i)
	}
	return waitAll(ctx, len(c.regs), c.registered)
}

// trunk registers (the rate limit is off then), waits to be told its
// registration is lost, and recovers as the policy says.
func (c *baselineClients) trunk(i int) {
	defer c.wg.Done()
	if !(naivePolicy{}).recover(c.ctx, c.regs[i], &counts{}) {
		return
	}
	c.up.Add(1)
	select {
	case <-c.lostCh:
	case <-c.ctx.Done():
		return
	}
	c.up.Add(-1)
	c.rec.lost(i, time.Now())
	if !c.pol.recover(c.ctx, c.regs[i], &c.seen) {
		return
	}
	c.up.Add(1)
	c.rec.back(i, time.Now())
}

func (c *baselineClients) lose() { c.lostOne.Do(func() { close(c.lostCh) }) }

func (c *baselineClients) transactions() uint64 {
	var n uint64
	for _, r := range c.regs {
		n += r.Transactions()
	}
	return n
}

func (c *baselineClients) registered() int { return int(c.up.Load()) }

func (c *baselineClients) trace() string {
	return fmt.Sprintf("%d REGISTERs sent, %d 503s seen, gave up %d times", c.transactions(),
		c.seen.rejected.Load(), c.seen.gaveUp.Load())
}

func (c *baselineClients) gate() (string, int) { return "", 0 }

func (c *baselineClients) gaveUp() int { return int(c.seen.gaveUp.Load()) }

func (c *baselineClients) stop() {
	c.cancel()
	c.wg.Wait()
	c.client.Close()
	c.ua.Close()
}

// errUnknownStrategy is returned for a -strategies entry this command lacks.
var errUnknownStrategy = errors.New("unknown strategy")
