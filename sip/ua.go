package sip

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	sipmsg "github.com/emiago/sipgo/sip"

	"github.com/relinkgo/relink/conn"
)

// UAConfig configures the UA that NewUA builds. The zero value is usable:
// kernel options that bound a silent peer at 15 s, sipgo's defaults
// otherwise.
type UAConfig struct {
	// KeepAlive configures the kernel's TCP keepalive on every TCP, TLS,
	// WS and WSS connection sipgo dials (WSS: once a trunk's flow uses it,
	// since sipgo dials WSS with a dialer of its own), as conn.Config.KeepAlive does (the same
	// defaults: 5 s idle, 1 s interval, 10 probes; a zero field means its
	// default). KeepAliveConfig{Idle: -1} (or any negative field with
	// Enable false) turns kernel keepalive off.
	KeepAlive net.KeepAliveConfig
	// UserTimeout is TCP_USER_TIMEOUT (Linux; ignored elsewhere) on every
	// TCP, TLS, WS and WSS connection sipgo dials (as KeepAlive): how long sent data may stay
	// unacknowledged before the kernel aborts the connection. Zero means
	// conn.DefaultUserTimeout (15 s); negative leaves the OS default (about
	// 15 minutes), i.e. off.
	UserTimeout time.Duration

	// UserAgentOptions are passed to sipgo.NewUA before relink's own. Do not
	// pass WithUserAgentTransportLayerOptions or
	// WithUserAgentTransactionLayerOptions there (sipgo keeps only the last
	// of each): use the two fields below.
	UserAgentOptions []sipgo.UserAgentOption
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

	// TLSConfig is the TLS client configuration of the UA's TLS and WSS
	// flows, for trunks without a TLSConfig of their own and for the
	// application's own requests. Nil means the system roots, ServerName
	// from the registrar's host. relink gives sipgo a configuration of its
	// own built on it (see TrunkConfig.TLSConfig): pass TLS settings here,
	// not with sipgo's WithUserAgenTLSConfig in UserAgentOptions, which
	// relink's replaces. Verification is never turned off by relink.
	TLSConfig *tls.Config
	// ConnectTimeout bounds each connection attempt (TCP connect plus the TLS
	// or WebSocket handshake) of a trunk's REGISTER or OPTIONS: an attempt
	// into a black hole is abandoned after it and redialled at once with a
	// fresh SYN, so that a restored registrar is reached within about this
	// long instead of at the kernel's next SYN retransmission (1, 3, 7, 15
	// ... s after the first). An attempt whose connect succeeded but whose
	// handshake ran out of time gets twice the bound next time, up to 8 s. A
	// TCP connect is not given more: on a path whose round trip exceeds the
	// bound no connection is made, so raise it there (1 s is several times
	// most round trips, and the kernel's own first SYN retransmission is at
	// 1 s). While an attempt follows one whose connect timed out (the same
	// REGISTER's, or the last to that destination within a minute), relink
	// also sends a bare TCP connect to the destination every 100 ms; when
	// one gets through, the waiting attempt (its SYN was lost) is abandoned
	// and redialled at once, so a restored path is seen within about 100 ms,
	// and a slow path still gets the whole bound. Zero means
	// DefaultConnectTimeout (1 s); negative turns the bound off (the kernel's
	// SYN schedule, within the trunk's RequestTimeout). The application's own
	// requests are dialled by sipgo without it.
	ConnectTimeout time.Duration
	// WatchCalls also watches the connections the application's own
	// requests and calls use (every TCP, TLS, WS and WSS connection of
	// the UA that carries a message), not only the trunks' flows: each is
	// probed at DefaultKeepAlive / DefaultKeepAliveTimeout, evicted from
	// sipgo's pool when it dies (failing its transactions at once) and
	// reported to OnFlowDeath with no Trunks. False (the default): only
	// flows a trunk registered over are probed.
	WatchCalls bool
	// InstanceID is the RFC 5626 +sip.instance of this UA, a URN such as
	// "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF". Empty means one made
	// at NewUA, stable for the UA's life; set it (and keep it across
	// restarts) so that a restarted gateway replaces its own bindings.
	InstanceID string
	// OnFlowDeath, if set, is called when relink declares a flow dead
	// (unanswered probes, the kernel's timeout, a reset, a connection that
	// left sipgo's pool, a failed OPTIONS qualify; for UDP a qualify that
	// got no answer): its address and the trunks that used it, for the
	// application's calls on it. It is called once per flow, after the
	// flow left sipgo's pool and before its trunks re-register, on a
	// goroutine of its own; it should not block for long.
	OnFlowDeath func(FlowDeath)
}

// FlowDeath describes a flow relink declared dead.
type FlowDeath struct {
	// Network is the flow's transport: "tcp", "tls", "ws", "wss" or "udp".
	Network string
	// Local and Remote are the flow's addresses (host:port).
	Local, Remote string
	// Err is why: wraps ErrFlowDead and the cause.
	Err error
	// Trunks are the trunks that used the flow when it died.
	Trunks []*Trunk
	// At is when it was declared dead.
	At time.Time
}

// UA is a sipgo UserAgent with relink's flow monitor: the trunks and fleets
// made on one UA share its TCP, TLS, WS and WSS flows, one CRLF ping per
// connection however many trunks use it. Use UserAgent for calls (a sipgo client or
// server on the same UserAgent shares the flows the trunks keep alive).
// Close it when done.
type UA struct {
	ua       *sipgo.UserAgent
	mon      *flowMonitor
	instance string // RFC 5626 +sip.instance (outbound.go)

	closeOnce sync.Once
	closeErr  error
}

// NewUA returns a UA whose sipgo UserAgent is prepared for relink's trunks:
//
//   - a transport read filter that lets relink see every byte arriving on
//     each TCP, TLS, WS and WSS flow (the pong to its CRLF ping, or any
//     message), so that a silent flow is detected within
//     TrunkConfig.KeepAlive + KeepAliveTimeout;
//   - TCP, TLS and WS transports whose dialers apply cfg.KeepAlive and
//     cfg.UserTimeout to the connections sipgo dials (WSS connections get
//     them when a trunk's flow first uses them);
//   - a TLS client configuration that verifies each server with the
//     TLSConfig of the trunk registering there (else cfg.TLSConfig), so
//     that trunks on one UA can have their own roots and client
//     certificates;
//   - WithTransactionLayerTerminateOnConnClose, so that the transactions
//     pending on a flow relink declares dead fail at once instead of
//     waiting for Timer B (32 s).
//
// sipgo gives no way to pass a logger to a transport created outside it, so
// the TCP, TLS and WS transports log to sipgo's default logger (slog.Default
// unless the application called sipgo's SetDefaultLogger); the transport
// layer's logger (WithTransportLayerLogger) still applies to the rest.
func NewUA(cfg UAConfig) (*UA, error) {
	inst, err := newInstanceID(cfg.InstanceID)
	if err != nil {
		return nil, err
	}
	mon := &flowMonitor{watchReads: true, userFilter: cfg.ReadFilter, onDeath: cfg.OnFlowDeath,
		watchCalls: cfg.WatchCalls, connectTimeout: orOff(cfg.ConnectTimeout, DefaultConnectTimeout, 0)}
	mon.init()
	mon.tls = newTLSDispatch(cfg.TLSConfig)
	mon.kit = &dialKit{kernel: conn.Config{KeepAlive: cfg.KeepAlive, UserTimeout: cfg.UserTimeout}, tls: mon.tls}
	// The read filter must come before WithTransportLayerTransports: that
	// option copies the layer's filter into the transports it installs,
	// and a filter set afterwards never reaches them (sipgo v1.7.3,
	// TransportLayer.withTransports).
	tp := make([]sipmsg.TransportLayerOption, 0, len(cfg.TransportLayerOptions)+2)
	tp = append(tp, sipmsg.WithTransportLayerReadFilter(mon.filter))
	tp = append(tp, cfg.TransportLayerOptions...)
	tp = append(tp, sipmsg.WithTransportLayerTransports(mon.kit.transports()))
	tx := make([]sipmsg.TransactionLayerOption, 0, len(cfg.TransactionLayerOptions)+1)
	tx = append(tx, sipmsg.WithTransactionLayerTerminateOnConnClose())
	tx = append(tx, cfg.TransactionLayerOptions...)

	all := make([]sipgo.UserAgentOption, 0, len(cfg.UserAgentOptions)+3)
	all = append(all, cfg.UserAgentOptions...)
	all = append(all,
		sipgo.WithUserAgenTLSConfig(mon.tls.config()),
		sipgo.WithUserAgentTransportLayerOptions(tp...),
		sipgo.WithUserAgentTransactionLayerOptions(tx...))
	ua, err := sipgo.NewUA(all...)
	if err != nil {
		return nil, err
	}
	mon.bind(ua)
	return &UA{ua: ua, mon: mon, instance: inst}, nil
}

// WrapUA returns a UA around a UserAgent made by sipgo.NewUA directly.
// relink cannot see its reads, so it probes each flow with an OPTIONS
// request instead of a CRLF ping (any answer proves the flow alive), and the
// kernel options are sipgo's. Give it
// WithTransactionLayerTerminateOnConnClose so that a dead flow fails its
// transactions at once. The UA takes ownership: its Close closes ua.
func WrapUA(ua *sipgo.UserAgent) *UA {
	mon := &flowMonitor{connectTimeout: DefaultConnectTimeout}
	mon.init()
	mon.bind(ua)
	inst, _ := newInstanceID("") // a fresh URN cannot fail
	return &UA{ua: ua, mon: mon, instance: inst}
}

// UserAgent returns the sipgo UserAgent, for calls and other requests of
// the application's own. Do not close it: close the UA.
func (u *UA) UserAgent() *sipgo.UserAgent { return u.ua }

// Close stops watching the UA's flows and closes the sipgo UserAgent (its
// transports and connections). Stop the trunks and fleets on it first:
// their REGISTERs fail once it is closed. Close is idempotent.
func (u *UA) Close() error {
	u.closeOnce.Do(func() {
		u.mon.close()
		u.closeErr = u.ua.Close()
	})
	return u.closeErr
}
