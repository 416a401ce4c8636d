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
	"net"
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

func run(ctx context.Context, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	logf := func(format string, a ...any) {
		fmt.Fprintf(out, "[%5.2fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, a...))
	}

	// The SDK: one reader with a long interval, so that the export happens
	// once, at Shutdown, with everything the run recorded.
	exp := &textExporter{}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(
		sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))))
	spans := &spanCounter{n: map[string]int{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))

	// SIP: a registrar behind a freeze proxy, and a Fleet on it.
	quiet := slog.New(slog.DiscardHandler)
	reg, err := registrar.New(registrar.Config{Password: "secret", DisableUDP: true})
	if err != nil {
		return err
	}
	defer reg.Close()
	sipPath, err := faultproxy.New(reg.Addr())
	if err != nil {
		return err
	}
	defer sipPath.Close()
	ua, err := sip.NewUA(sip.UAConfig{
		TransportLayerOptions:   []sipmsg.TransportLayerOption{sipmsg.WithTransportLayerLogger(quiet)},
		TransactionLayerOptions: []sipmsg.TransactionLayerOption{sipmsg.WithTransactionLayerLogger(quiet)},
	})
	if err != nil {
		return err
	}
	defer ua.Close()
	fleet := sip.NewFleet(ua, sip.FleetConfig{MeterProvider: mp, TracerProvider: tp})
	for i := range trunks {
		if _, err := fleet.Add(sip.TrunkConfig{
			Registrars: []string{"sip:" + sipPath.Addr() + ";transport=tcp"},
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

	// conn: a Link to an echo server behind a freeze proxy, probing its
	// Conn with CRLF (echoed back), through a gate of its own.
	echo, err := startEcho()
	if err != nil {
		return err
	}
	defer echo.close()
	linkPath, err := faultproxy.New(echo.addr())
	if err != nil {
		return err
	}
	defer linkPath.Close()
	link, err := conn.NewLink(conn.LinkConfig{
		Dialer: &conn.Dialer{Config: conn.Config{
			Probe:          conn.CRLF,
			ProbeInterval:  200 * time.Millisecond,
			ProbeTimeout:   300 * time.Millisecond,
			MeterProvider:  mp,
			TracerProvider: tp,
		}},
		Addrs: []string{linkPath.Addr()},
		Session: func(ctx context.Context, c *conn.Conn) error {
			_, err := io.Copy(io.Discard, c) // the echoed probes prove the peer alive
			if err == nil {
				err = io.EOF
			}
			return err
		},
		Backoff:        backoff.NewFactory(backoff.Exponential{Base: 50 * time.Millisecond, Max: 500 * time.Millisecond}),
		Gate:           backoff.NewGate(backoff.GateConfig{Destination: linkPath.Addr(), MeterProvider: mp}),
		DialTimeout:    time.Second,
		MeterProvider:  mp,
		TracerProvider: tp,
	})
	if err != nil {
		return err
	}

	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = fleet.Run(runCtx) })
	wg.Go(func() { _ = link.Run(runCtx) })
	stopped := false
	stopAll := func() {
		if !stopped {
			stopped = true
			stopRun()
			wg.Wait()
		}
	}
	defer stopAll()

	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	waitFor := func(what string, ok func() bool) error {
		for !ok() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
			case <-poll.C:
			}
		}
		return nil
	}
	registered := func() int { return fleet.Stats().Registered }

	if err := waitFor("registration", func() bool { return registered() == trunks && link.State() == conn.LinkReady }); err != nil {
		return err
	}
	logf("%d trunks registered; link ready", trunks)

	sipPath.Freeze()
	linkPath.Freeze()
	logf("both paths silent (no FIN, no RST)")
	if err := waitFor("detection", func() bool { return registered() == 0 && link.State() != conn.LinkReady }); err != nil {
		return err
	}
	logf("relink noticed: trunks re-registering, link %v", link.State())

	reg.SetOverload(time.Second)
	sipPath.Forget()
	linkPath.Forget()
	logf("paths back; the registrar answers 503 + Retry-After: 1 for 300 ms")
	time.Sleep(150 * time.Millisecond)
	if err := mp.ForceFlush(ctx); err != nil {
		return err
	}
	fmt.Fprint(out, exp.take("export during the recovery (gates paused by the 503's Retry-After)"))
	time.Sleep(150 * time.Millisecond)
	reg.ClearOverload()
	if err := waitFor("recovery", func() bool { return registered() == trunks && link.State() == conn.LinkReady }); err != nil {
		return err
	}
	logf("%d trunks registered again; link ready", trunks)
	stopAll()
	logf("stopped (trunks unregistered); exporting")

	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if err := errors.Join(mp.Shutdown(sctx), tp.Shutdown(sctx)); err != nil {
		return err
	}
	fmt.Fprint(out, exp.take("final export, at MeterProvider.Shutdown"))
	spans.print(out)
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

// echoServer echoes every byte back (CRLF probes included).
type echoServer struct {
	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs map[net.Conn]struct{}
}

func startEcho() (*echoServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &echoServer{ln: ln, cs: map[net.Conn]struct{}{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.cs[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				_, _ = io.Copy(c, c)
				c.Close()
				s.mu.Lock()
				delete(s.cs, c)
				s.mu.Unlock()
			})
		}
	})
	return s, nil
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

func (s *echoServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.cs {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}
