package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/relinkgo/relink/backoff"
	"github.com/relinkgo/relink/sip"
	"github.com/relinkgo/relink/sip/siptest"
)

// TrunksResult is the trunks row.
type TrunksResult struct {
	Row      string  `json:"row"` // "trunks"
	Trunks   int     `json:"trunks"`
	Gate     string  `json:"gate"`        // told (Rate = capacity) or learn
	Capacity float64 `json:"capacity"`    // REGISTER/s the registrar serves
	ExpiresS float64 `json:"expires_s"`   // Expires during the measurement
	KeepS    float64 `json:"keepalive_s"` // KeepAlive during the measurement
	// RegisterAllS is from Fleet.Run to the last trunk Registered.
	RegisterAllS float64 `json:"register_all_s"`
	// Heap: HeapInuse + StackInuse after a GC at the end of the idle
	// window, above the process's before the UA was made, ÷ trunks.
	HeapPerTrunkKiB    float64 `json:"heap_per_trunk_kib"`
	HeapObjPerTrunkKiB float64 `json:"heap_inuse_per_trunk_kib"`
	StackPerTrunkKiB   float64 `json:"stack_per_trunk_kib"`
	GoroutinesPerTrunk float64 `json:"goroutines_per_trunk"`
	// CPUSPerTrunkHour is at the defaults (Expires 3600 s, KeepAlive
	// 10 s): the idle rate plus 1.25 refreshes an hour.
	CPUSPerTrunkHour float64 `json:"cpu_s_per_trunk_hour"`
	// CPUSPerTrunkHourMeasured is at ExpiresS: the idle rate plus
	// 3600 / (0.8 × ExpiresS) refreshes an hour.
	CPUSPerTrunkHourMeasured float64 `json:"cpu_s_per_trunk_hour_at_expires"`
	CPUIdleSPerTrunkHour     float64 `json:"cpu_idle_s_per_trunk_hour"`
	CPUMsPerRefresh          float64 `json:"cpu_ms_per_refresh"`  // per trunk refresh, the idle rate taken off
	TxPerRefresh             float64 `json:"tx_per_refresh"`      // REGISTER transactions per refresh
	IdleWindowS              float64 `json:"idle_window_s"`       // no refresh due
	IdleTx                   uint64  `json:"idle_transactions"`   // REGISTERs sent in it (0 expected)
	RefreshWindowS           float64 `json:"refresh_window_s"`    // until every trunk refreshed once
	WindowS                  float64 `json:"window_s"`            // both windows
	Rejected503              uint64  `json:"rejected_503"`        // the registrar's 503s for lack of capacity
	RegistrarRegisters       uint64  `json:"registrar_registers"` // REGISTERs it received
	Flows                    int     `json:"flows"`               // TCP connections at the registrar
}

// trunksRow runs the registrar and the trunks in processes of their own.
func trunksRow(o *options) (*TrunksResult, error) {
	reg, err := startChild("-role", "registrar", "-capacity", strconv.FormatFloat(o.capacity, 'g', -1, 64))
	if err != nil {
		return nil, err
	}
	var rd ready
	if err := reg.result(&rd, 30*time.Second); err != nil {
		reg.stop()
		return nil, err
	}
	if len(rd.Addrs) == 0 {
		reg.stop()
		return nil, errNoAddrs
	}
	tr, err := startChild("-role", "trunks", "-registrar", rd.Addrs[0], "-trunks", strconv.Itoa(o.trunks),
		"-capacity", strconv.FormatFloat(o.capacity, 'g', -1, 64), "-gate", o.gate,
		"-expires", o.expires.String(), "-keepalive", o.keepAlive.String(), "-timeout", o.timeout.String(),
		"-pprof", o.pprof)
	if err != nil {
		reg.stop()
		return nil, err
	}
	r := &TrunksResult{}
	err = tr.result(r, o.timeout+30*time.Second)
	var st siptest.Stats
	if l := reg.stop(); l != "" {
		_ = json.Unmarshal([]byte(l), &st)
	}
	tr.stop()
	if err != nil {
		return nil, err
	}
	r.Rejected503, r.RegistrarRegisters, r.Flows = st.Shed, st.Registers, st.Connections
	return r, nil
}

// serveRegistrar is the registrar role: an embedded registrar told its
// capacity, until stdin closes; then it prints its Stats.
func serveRegistrar(o *options, in io.Reader, out io.Writer) error {
	srv, err := siptest.NewRegistrar(siptest.Config{Password: "secret", MinExpires: -1})
	if err != nil {
		return err
	}
	defer srv.Close()
	srv.SetCapacity(o.capacity)
	b, _ := json.Marshal(ready{Addrs: []string{srv.URI()}})
	fmt.Fprintln(out, string(b))
	waitStdin(in)
	b, _ = json.Marshal(srv.Stats())
	fmt.Fprintln(out, string(b))
	return nil
}

// fleetRun is a running Fleet and what the measurement needs of it.
type fleetRun struct {
	fleet  *sip.Fleet
	trunks []*sip.Trunk
	first  atomic.Int64 // UnixNano of the first Registered
}

// runTrunks is the trunks role: it prints one TrunksResult.
func runTrunks(o *options, out io.Writer) error {
	profileAllocs(o.pprof)
	if _, err := raiseFDs(uint64(o.trunks + 1024)); err != nil {
		fmt.Fprintln(os.Stderr, "scale:", err)
	}
	base := snapshot()
	fr, err := startFleet(o)
	if err != nil {
		return err
	}
	r := &TrunksResult{Row: "trunks", Trunks: o.trunks, Gate: o.gate, Capacity: o.capacity,
		ExpiresS: o.expires.Seconds(), KeepS: o.keepAlive.Seconds()}
	if o.keepAlive == 0 {
		r.KeepS = sip.DefaultKeepAlive.Seconds()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	go func() { _ = fr.fleet.Run(ctx) }()
	allAt, err := fr.waitRegistered(start.Add(o.timeout))
	if err != nil {
		return err
	}
	r.RegisterAllS = allAt.Sub(start).Seconds()
	if err := fr.measure(o, r, base, allAt); err != nil {
		return err
	}
	b, _ := json.Marshal(r)
	fmt.Fprintln(out, string(b))
	return nil
}

// startFleet makes the UA and the Fleet with o.trunks trunks, user tN,
// password "secret".
func startFleet(o *options) (*fleetRun, error) {
	ua, err := sip.NewUA(sip.UAConfig{})
	if err != nil {
		return nil, err
	}
	fr := &fleetRun{}
	gate := backoff.GateConfig{}
	if o.gate == "told" {
		gate.Rate = o.capacity
	}
	fr.fleet = sip.NewFleet(ua, sip.FleetConfig{Gate: gate, OnStateChange: func(c sip.TrunkStateChange) {
		if c.To == sip.Registered {
			fr.first.CompareAndSwap(0, time.Now().UnixNano())
		}
	}})
	host, _, _ := cutHost(o.registrar)
	for i := range o.trunks {
		user := "t" + strconv.Itoa(i)
		t, err := fr.fleet.Add(sip.TrunkConfig{
			Registrars:        []string{o.registrar},
			AOR:               "sip:" + user + "@" + host,
			Password:          "secret",
			Expires:           o.expires,
			KeepAlive:         o.keepAlive,
			UnregisterTimeout: -1, // the process ends; the bindings lapse
		})
		if err != nil {
			return nil, err
		}
		fr.trunks = append(fr.trunks, t)
	}
	return fr, nil
}

// waitRegistered waits until every trunk is Registered, and returns when.
func (fr *fleetRun) waitRegistered(deadline time.Time) (time.Time, error) {
	for {
		st := fr.fleet.Stats()
		if st.Registered == st.Trunks {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%d of %d trunks registered by the deadline (%+v)", st.Registered, st.Trunks, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// transactions returns each trunk's REGISTER transactions so far, and
// their sum.
func (fr *fleetRun) transactions() ([]uint64, uint64) {
	tx, sum := make([]uint64, len(fr.trunks)), uint64(0)
	for i, t := range fr.trunks {
		tx[i] = t.Transactions()
		sum += tx[i]
	}
	return tx, sum
}
