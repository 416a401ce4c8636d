package sip

import (
	"net"
	"runtime"
	"sync"
	"weak"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/conn"
)

// UAConfig configures the sipgo UserAgent that NewUA builds.
type UAConfig struct {
	// Conn holds the kernel options applied to every TCP and TLS
	// connection sipgo dials: TCP keepalive and TCP_USER_TIMEOUT (see
	// conn.Config; its zero value bounds a silent peer at 15 s). Its Probe
	// fields are ignored: trunks ping their flows themselves (see
	// TrunkConfig.KeepAlive).
	Conn conn.Config
	// TransportLayerOptions are passed to sipgo's transport layer after
	// relink's read filter and before relink's TCP and TLS transports. A
	// WithTransportLayerTransports among them that sets TCP or TLS wins
	// over relink's (and loses its kernel options); use ReadFilter rather
	// than WithTransportLayerReadFilter, which would replace relink's.
	TransportLayerOptions []sipmsg.TransportLayerOption
	// TransactionLayerOptions are passed to sipgo's transaction layer after
	// WithTransactionLayerTerminateOnConnClose.
	TransactionLayerOptions []sipmsg.TransactionLayerOption
	// ReadFilter, if set, is called by relink's read filter on every read,
	// after relink has seen it.
	ReadFilter sipmsg.TransportReadFilter
}

// NewUA returns a sipgo UserAgent prepared for relink's trunks:
//
//   - a transport read filter that lets relink see every byte arriving on
//     each TCP and TLS flow (the pong to its CRLF ping, or any message), so
//     that a silent flow is detected within TrunkConfig.KeepAlive +
//     KeepAliveTimeout;
//   - TCP and TLS transports whose DialerCreate applies cfg.Conn's kernel
//     options (keepalive, TCP_USER_TIMEOUT) to the connections sipgo dials;
//   - WithTransactionLayerTerminateOnConnClose, so that the transactions
//     pending on a flow relink declares dead fail at once instead of
//     waiting for Timer B (32 s).
//
// opts are passed to sipgo.NewUA before relink's own: do not pass
// WithUserAgentTransportLayerOptions or WithUserAgentTransactionLayerOptions
// there (sipgo keeps only the last of each); use cfg's fields.
//
// sipgo gives no way to pass a logger to a transport created outside it, so
// the TCP and TLS transports log to sipgo's default logger (slog.Default
// unless the application called sipgo's SetDefaultLogger); the transport
// layer's logger (WithTransportLayerLogger) still applies to the rest.
//
// A UserAgent made by sipgo.NewUA directly also works with NewTrunk, but
// relink cannot see its pongs: it then probes each flow with an OPTIONS
// request instead of a CRLF ping, and the kernel options are sipgo's.
func NewUA(cfg UAConfig, opts ...sipgo.UserAgentOption) (*sipgo.UserAgent, error) {
	mon := &flowMonitor{watchReads: true, userFilter: cfg.ReadFilter}
	mon.init()
	dialer := func(laddr net.Addr) net.Dialer {
		d := cfg.Conn.NetDialer()
		if a, ok := laddr.(*net.TCPAddr); ok && a != nil {
			d.LocalAddr = a
		}
		return d
	}
	// The read filter must come before WithTransportLayerTransports: that
	// option copies the layer's filter into the transports it installs,
	// and a filter set afterwards never reaches them (sipgo v1.7.3,
	// TransportLayer.withTransports).
	tp := make([]sipmsg.TransportLayerOption, 0, len(cfg.TransportLayerOptions)+2)
	tp = append(tp, sipmsg.WithTransportLayerReadFilter(mon.filter))
	tp = append(tp, cfg.TransportLayerOptions...)
	tp = append(tp, sipmsg.WithTransportLayerTransports(sipmsg.TransportsConfig{
		TCP: &sipmsg.TransportTCP{DialerCreate: dialer},
		TLS: &sipmsg.TransportTLS{TransportTCP: &sipmsg.TransportTCP{DialerCreate: dialer}},
	}))
	tx := make([]sipmsg.TransactionLayerOption, 0, len(cfg.TransactionLayerOptions)+1)
	tx = append(tx, sipmsg.WithTransactionLayerTerminateOnConnClose())
	tx = append(tx, cfg.TransactionLayerOptions...)

	all := make([]sipgo.UserAgentOption, 0, len(opts)+2)
	all = append(all, opts...)
	all = append(all,
		sipgo.WithUserAgentTransportLayerOptions(tp...),
		sipgo.WithUserAgentTransactionLayerOptions(tx...))
	ua, err := sipgo.NewUA(all...)
	if err != nil {
		return nil, err
	}
	mon.bind(ua)
	register(ua, mon)
	return ua, nil
}

// The registry maps each UserAgent to its flow monitor, so that every trunk
// and fleet on one UA shares the flows (one ping per connection). Keys are
// weak and a cleanup removes the entry when the UA is collected; the monitor
// holds the UA's layers, never the UA itself.
var registry struct {
	mu sync.Mutex
	m  map[weak.Pointer[sipgo.UserAgent]]*flowMonitor
}

// register records mon as ua's monitor unless ua already has one, and
// returns the monitor that is recorded.
func register(ua *sipgo.UserAgent, mon *flowMonitor) *flowMonitor {
	k := weak.Make(ua)
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if m := registry.m[k]; m != nil {
		return m
	}
	if registry.m == nil {
		registry.m = make(map[weak.Pointer[sipgo.UserAgent]]*flowMonitor)
	}
	registry.m[k] = mon
	runtime.AddCleanup(ua, unregister, k)
	return mon
}

func unregister(k weak.Pointer[sipgo.UserAgent]) {
	registry.mu.Lock()
	delete(registry.m, k)
	registry.mu.Unlock()
}

// monitorFor returns ua's flow monitor, creating an OPTIONS-probing one for
// a UserAgent that NewUA did not make.
func monitorFor(ua *sipgo.UserAgent) *flowMonitor {
	registry.mu.Lock()
	mon := registry.m[weak.Make(ua)]
	registry.mu.Unlock()
	if mon != nil {
		return mon
	}
	mon = &flowMonitor{}
	mon.init()
	mon.bind(ua)
	return register(ua, mon)
}
