// Command telemetry runs relink under the OpenTelemetry SDK and prints every
// metric it exports, from each package: sip (a Fleet of trunks), backoff
// (the registrars' gates) and conn (a supervised Link with its probed Conn).
//
//	go run ./examples/telemetry
//
// It needs no server and stops by itself after a few seconds: five trunks
// register with an in-process registrar, and a Link connects to an
// in-process echo server, each behind a freeze proxy. Then both paths go
// silent (no FIN, no RST) until relink notices; the registrar is made to
// answer 503 + Retry-After for a moment; the paths come back and everything
// recovers. The metrics go through an SDK MeterProvider whose reader hands
// them to a small text exporter (sdkmetric.Exporter, written here: any
// exporter — OTLP, Prometheus, stdoutmetric — plugs in the same way), and
// the spans to a span processor that counts them.
//
// relink takes providers in its configs (FleetConfig, TrunkConfig,
// GateConfig, conn.Config, LinkConfig) and falls back to the otel globals.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	sipmsg "github.com/emiago/sipgo/sip"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/conn"
	"github.com/relinkgo/relink/internal/faultproxy"
	"github.com/relinkgo/relink/internal/registrar"
	"github.com/relinkgo/relink/internal/testkit"
	"github.com/relinkgo/relink/sip"
)

func main() {
	// sipgo's TCP transports log through slog.Default.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "telemetry:", err)
		os.Exit(1)
	}
}

// instruments lists every instrument relink defines, by package, so that the
// output can say which ones recorded nothing in this run.
var instruments = []string{
	"relink.sip.registrations", "relink.sip.register.duration", "relink.sip.responses",
	"relink.sip.recoveries", "relink.sip.flow.failures",
	"relink.gate.wait.duration", "relink.gate.shed", "relink.gate.outcomes", "relink.gate.admitted",
	"relink.gate.in_flight", "relink.gate.queue.length", "relink.gate.rate", "relink.gate.state",
	"relink.conn.detection.duration", "relink.conn.probes", "relink.conn.deaths",
	"relink.link.connections", "relink.link.attempts",
}

const trunks = 5

// run plays the scenario: setup (the SDK, a Fleet behind a freeze proxy, a
// Link to an echo server behind another) → warm-up (all registered, the link
// ready) → fault (both paths silent until relink notices) → restore (503s
// for a moment, then the paths return and everything recovers) → report
// (the exports and the spans).
func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d := newDemo(out)
	defer d.close()
	if err := d.setupSIP(); err != nil {
		return err
	}
	if err := d.setupLink(); err != nil {
		return err
	}
	d.startRuns(ctx)
	if err := d.warmUp(ctx); err != nil {
		return err
	}
	if err := d.fault(ctx); err != nil {
		return err
	}
	if err := d.restore(ctx); err != nil {
		return err
	}
	return d.report(ctx)
}

// demo holds the scenario's parts.
type demo struct {
	out   io.Writer
	start time.Time
	exp   *textExporter
	mp    *sdkmetric.MeterProvider
	spans *spanCounter
	tp    *sdktrace.TracerProvider

	reg      *registrar.Registrar
	sipPath  *faultproxy.Proxy
	fleet    *sip.Fleet
	linkPath *faultproxy.Proxy
	link     *conn.Link

	closers []func() // run in reverse by close
	stopped bool
	stopRun func()
	wg      sync.WaitGroup
	poll    *time.Ticker
}

// newDemo sets up the SDK: one reader with a long interval, so that the
// export happens once, at Shutdown, with everything the run recorded.
func newDemo(out io.Writer) *demo {
	d := &demo{out: out, start: time.Now(), exp: &textExporter{}, spans: &spanCounter{n: map[string]int{}}}
	d.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(
		sdkmetric.NewPeriodicReader(d.exp, sdkmetric.WithInterval(time.Hour))))
	d.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(d.spans))
	d.poll = time.NewTicker(20 * time.Millisecond)
	return d
}

func (d *demo) logf(format string, a ...any) {
	fmt.Fprintf(d.out, "[%5.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, a...))
}

// close stops the runs and closes every part, the last opened first.
func (d *demo) close() {
	d.stopRuns()
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.poll.Stop()
}

// setupSIP starts a registrar behind a freeze proxy, and a Fleet on it.
//
//nolint:contextcheck // registrar.New takes no ctx: the registrar lives until its Close
func (d *demo) setupSIP() error {
	quiet := slog.New(slog.DiscardHandler)
	reg, err := registrar.New(registrar.Config{Password: "secret", DisableUDP: true})
	if err != nil {
		return err
	}
	d.reg = reg
	d.closers = append(d.closers, func() { reg.Close() })
	if d.sipPath, err = faultproxy.New(reg.Addr()); err != nil {
		return err
	}
	d.closers = append(d.closers, func() { d.sipPath.Close() })
	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(quiet)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(quiet)},
	})
	if err != nil {
		return err
	}
	d.closers = append(d.closers, func() { ua.Close() })
	d.fleet = sip.NewFleet(ua, sip.FleetConfig{MeterProvider: d.mp, TracerProvider: d.tp})
	for i := range trunks {
		if _, err := d.fleet.Add(sip.TrunkConfig{
			Registrars: []string{"sip:" + d.sipPath.Addr() + ";transport=tcp"},
			AOR:        fmt.Sprintf("sip:trunk%d@relink.test", i),
			Password:   "secret",
			// Short, for a demonstration: the defaults (10 s + 5 s) bound
			// detection at 15 s.
			KeepAlive:        500 * time.Millisecond,
			KeepAliveTimeout: 500 * time.Millisecond,
		}); err != nil {
			return err
		}
	}
	return nil
}

// setupLink starts a Link to an echo server behind a freeze proxy, probing
// its Conn with CRLF (echoed back), through a gate of its own.
func (d *demo) setupLink() error {
	echo, err := testkit.ListenEcho("")
	if err != nil {
		return err
	}
	d.closers = append(d.closers, func() { echo.Close() })
	if d.linkPath, err = faultproxy.New(echo.Addr()); err != nil {
		return err
	}
	d.closers = append(d.closers, func() { d.linkPath.Close() })
	d.link, err = conn.NewLink(conn.LinkConfig{
		Dialer: &conn.Dialer{Config: conn.Config{
			Probe:          conn.CRLF,
			ProbeInterval:  200 * time.Millisecond,
			ProbeTimeout:   300 * time.Millisecond,
			MeterProvider:  d.mp,
			TracerProvider: d.tp,
		}},
		Addrs: []string{d.linkPath.Addr()},
		Session: func(ctx context.Context, c *conn.Conn) error {
			_, err := io.Copy(io.Discard, c) // the echoed probes prove the peer alive
			if err == nil {
				err = io.EOF
			}
			return err
		},
		Backoff:        backoff.NewFactory(backoff.Exponential{Base: 50 * time.Millisecond, Max: 500 * time.Millisecond}),
		Gate:           backoff.NewGate(backoff.GateConfig{Destination: d.linkPath.Addr(), MeterProvider: d.mp}),
		DialTimeout:    time.Second,
		MeterProvider:  d.mp,
		TracerProvider: d.tp,
	})
	return err
}

// startRuns runs the Fleet and the Link until stopRuns.
func (d *demo) startRuns(ctx context.Context) {
	runCtx, stop := context.WithCancel(ctx)
	d.stopRun = stop
	d.wg.Go(func() { _ = d.fleet.Run(runCtx) })
	d.wg.Go(func() { _ = d.link.Run(runCtx) })
}

// stopRuns stops the Fleet (its trunks unregister) and the Link, once.
func (d *demo) stopRuns() {
	if !d.stopped && d.stopRun != nil {
		d.stopped = true
		d.stopRun()
		d.wg.Wait()
	}
}

func (d *demo) waitFor(ctx context.Context, what string, ok func() bool) error {
	for !ok() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-d.poll.C:
		}
	}
	return nil
}

func (d *demo) registered() int { return d.fleet.Stats().Registered }

func (d *demo) allUp() bool { return d.registered() == trunks && d.link.State() == conn.LinkReady }

func (d *demo) warmUp(ctx context.Context) error {
	if err := d.waitFor(ctx, "registration", d.allUp); err != nil {
		return err
	}
	d.logf("%d trunks registered; link ready", trunks)
	return nil
}

func (d *demo) fault(ctx context.Context) error {
	d.sipPath.Freeze()
	d.linkPath.Freeze()
	d.logf("both paths silent (no FIN, no RST)")
	if err := d.waitFor(ctx, "detection", func() bool { return d.registered() == 0 && d.link.State() != conn.LinkReady }); err != nil {
		return err
	}
	d.logf("relink noticed: trunks re-registering, link %v", d.link.State())
	return nil
}

func (d *demo) restore(ctx context.Context) error {
	d.reg.SetOverload(time.Second)
	d.sipPath.Forget()
	d.linkPath.Forget()
	d.logf("paths back; the registrar answers 503 + Retry-After: 1 for 300 ms")
	time.Sleep(150 * time.Millisecond)
	if err := d.mp.ForceFlush(ctx); err != nil {
		return err
	}
	fmt.Fprint(d.out, d.exp.take("export during the recovery (gates paused by the 503's Retry-After)"))
	time.Sleep(150 * time.Millisecond)
	d.reg.ClearOverload()
	if err := d.waitFor(ctx, "recovery", d.allUp); err != nil {
		return err
	}
	d.logf("%d trunks registered again; link ready", trunks)
	return nil
}

// report stops everything and prints the final export and the spans. The
// export runs even if ctx has ended, within 5 s.
func (d *demo) report(ctx context.Context) error {
	d.stopRuns()
	d.logf("stopped (trunks unregistered); exporting")
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	if err := errors.Join(d.mp.Shutdown(sctx), d.tp.Shutdown(sctx)); err != nil {
		return err
	}
	fmt.Fprint(d.out, d.exp.take("final export, at MeterProvider.Shutdown"))
	d.spans.print(d.out)
	return nil
}

// textExporter is a minimal sdkmetric.Exporter that renders what it is
// given as text, kept until take.
type textExporter struct {
	mu   sync.Mutex
	text strings.Builder
}

func (e *textExporter) Temporality(k sdkmetric.InstrumentKind) metricdata.Temporality {
	return sdkmetric.DefaultTemporalitySelector(k)
}

func (e *textExporter) Aggregation(k sdkmetric.InstrumentKind) sdkmetric.Aggregation {
	return sdkmetric.DefaultAggregationSelector(k)
}

// Export renders rm at once: the SDK may reuse it afterwards.
func (e *textExporter) Export(_ context.Context, rm *metricdata.ResourceMetrics) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	render(&e.text, rm)
	return nil
}

// take returns what was exported since the last take, under a title.
func (e *textExporter) take(title string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := "\n=== " + title + "\n" + e.text.String()
	e.text.Reset()
	return s
}

func (e *textExporter) ForceFlush(context.Context) error { return nil }
func (e *textExporter) Shutdown(context.Context) error   { return nil }

// render writes the metrics, scope by scope, and the instruments that
// recorded nothing.
func render(w io.Writer, rm *metricdata.ResourceMetrics) {
	seen := map[string]bool{}
	{
		sms := slices.Clone(rm.ScopeMetrics)
		sort.Slice(sms, func(i, j int) bool { return sms[i].Scope.Name < sms[j].Scope.Name })
		for _, sm := range sms {
			fmt.Fprintf(w, "\nscope %s\n", sm.Scope.Name)
			ms := slices.Clone(sm.Metrics)
			sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
			for _, m := range ms {
				seen[m.Name] = true
				printMetric(w, m)
			}
		}
	}
	var none []string
	for _, name := range instruments {
		if !seen[name] {
			none = append(none, name)
		}
	}
	if len(none) > 0 {
		fmt.Fprintf(w, "\nno data in this run: %s\n", strings.Join(none, ", "))
	}
}

func printMetric(w io.Writer, m metricdata.Metrics) {
	unit := ""
	if m.Unit != "" {
		unit = " [" + m.Unit + "]"
	}
	line := func(kind string) { fmt.Fprintf(w, "  %s%s %s — %s\n", m.Name, unit, kind, m.Description) }
	point := func(set attribute.Set, v string) { fmt.Fprintf(w, "      %-64s %s\n", attrs(set), v) }
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		line(sumKind(d.IsMonotonic))
		for _, p := range d.DataPoints {
			point(p.Attributes, fmt.Sprint(p.Value))
		}
	case metricdata.Sum[float64]:
		line(sumKind(d.IsMonotonic))
		for _, p := range d.DataPoints {
			point(p.Attributes, fmt.Sprintf("%g", p.Value))
		}
	case metricdata.Gauge[int64]:
		line("gauge")
		for _, p := range d.DataPoints {
			point(p.Attributes, fmt.Sprint(p.Value))
		}
	case metricdata.Gauge[float64]:
		line("gauge")
		for _, p := range d.DataPoints {
			point(p.Attributes, fmt.Sprintf("%.1f", p.Value))
		}
	case metricdata.Histogram[float64]:
		line("histogram")
		for _, p := range d.DataPoints {
			v := fmt.Sprintf("count %d, sum %.4g", p.Count, p.Sum)
			if mn, ok := p.Min.Value(); ok {
				mx, _ := p.Max.Value()
				v += fmt.Sprintf(", min %.4g, max %.4g", mn, mx)
			}
			point(p.Attributes, v)
		}
	default:
		line(fmt.Sprintf("%T", d))
	}
}

func sumKind(monotonic bool) string {
	if monotonic {
		return "counter"
	}
	return "up-down counter"
}

func attrs(set attribute.Set) string {
	if set.Len() == 0 {
		return "(no attributes)"
	}
	parts := make([]string, 0, set.Len())
	for it := set.Iter(); it.Next(); {
		kv := it.Attribute()
		parts = append(parts, string(kv.Key)+"="+kv.Value.String())
	}
	return strings.Join(parts, " ")
}

// spanCounter is a SpanProcessor that counts ended spans by name and status.
type spanCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (s *spanCounter) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s *spanCounter) OnEnd(sp sdktrace.ReadOnlySpan) {
	s.mu.Lock()
	s.n[sp.Name()+" ("+strings.ToLower(sp.Status().Code.String())+")"]++
	s.mu.Unlock()
}
func (s *spanCounter) Shutdown(context.Context) error   { return nil }
func (s *spanCounter) ForceFlush(context.Context) error { return nil }

func (s *spanCounter) print(w io.Writer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, len(s.n))
	for k := range s.n {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(w, "\nspans\n")
	for _, k := range keys {
		fmt.Fprintf(w, "  %-40s %d\n", k, s.n[k])
	}
}
