package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Refreshes come at 75-85 % of the grant (sip.TrunkConfig.Expires).
const (
	refreshEarliest = 0.75
	refreshLatest   = 0.85
	// refreshesPerHourAtDefault: one every 0.8 × 3600 s on average.
	refreshesPerHourAtDefault = 1 / 0.8
	settle                    = time.Second // after the last registration, before the idle window
	margin                    = 2 * time.Second
)

// errNoIdleWindow is a registration so slow that refreshes began before the
// idle window could.
var errNoIdleWindow = errors.New("scale: refreshes are due before an idle window of 5 s: raise -expires or -capacity")

// measure takes the idle window (from settle after allAt until the first
// refresh can be due), the heap and goroutines at its end, then the
// refresh window (until every trunk sent a REGISTER more), and fills r.
func (fr *fleetRun) measure(o *options, r *TrunksResult, base mem, allAt time.Time) error {
	time.Sleep(settle)
	first := time.Unix(0, fr.first.Load())
	idleEnd := first.Add(time.Duration(refreshEarliest*float64(o.expires)) - margin)
	if time.Until(idleEnd) < 5*time.Second {
		return errNoIdleWindow
	}
	_, tx0 := fr.transactions()
	m, err := startCPU(o.pprof, "trunks-idle")
	if err != nil {
		return err
	}
	time.Sleep(time.Until(idleEnd))
	cpuIdle, wallIdle := m.stop()
	perTrunk, tx1 := fr.transactions()
	held := snapshot().minus(base)
	if err := writeProfiles(o.pprof, "trunks"); err != nil {
		return err
	}
	if m, err = startCPU(o.pprof, "trunks-refresh"); err != nil {
		return err
	}
	last := allAt.Add(time.Duration(refreshLatest*float64(o.expires)) + 5*margin)
	if err := fr.waitRefreshed(perTrunk, last); err != nil {
		return err
	}
	cpuRef, wallRef := m.stop()
	_, tx2 := fr.transactions()

	n := float64(o.trunks)
	r.HeapPerTrunkKiB = float64(held.heap) / n / 1024
	r.HeapObjPerTrunkKiB = float64(held.heapInuse) / n / 1024
	r.StackPerTrunkKiB = float64(held.stackInuse) / n / 1024
	r.GoroutinesPerTrunk = float64(held.goroutines) / n
	r.IdleWindowS, r.RefreshWindowS = wallIdle.Seconds(), wallRef.Seconds()
	r.WindowS = r.IdleWindowS + r.RefreshWindowS
	r.IdleTx = tx1 - tx0
	idleRate := cpuIdle.Seconds() / wallIdle.Seconds() // CPU s per s, whole fleet
	r.CPUIdleSPerTrunkHour = idleRate * 3600 / n
	perRefresh := max(0, cpuRef.Seconds()-idleRate*wallRef.Seconds()) / n
	r.CPUMsPerRefresh = perRefresh * 1000
	r.TxPerRefresh = float64(tx2-tx1) / n
	r.CPUSPerTrunkHour = r.CPUIdleSPerTrunkHour + refreshesPerHourAtDefault*perRefresh
	r.CPUSPerTrunkHourMeasured = r.CPUIdleSPerTrunkHour + 3600/(0.8*o.expires.Seconds())*perRefresh
	return nil
}

// waitRefreshed waits until every trunk has sent a REGISTER more than in
// before, at the latest until deadline.
func (fr *fleetRun) waitRefreshed(before []uint64, deadline time.Time) error {
	for i := 0; i < len(fr.trunks); {
		if fr.trunks[i].Transactions() > before[i] {
			i++
			continue
		}
		if time.Now().After(deadline) {
			left := 0
			for j := i; j < len(fr.trunks); j++ {
				if fr.trunks[j].Transactions() == before[j] {
					left++
				}
			}
			return fmt.Errorf("%d of %d trunks did not refresh within %.0f %% of -expires after the last registration",
				left, len(fr.trunks), 100*refreshLatest)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// cutHost returns the host of a SIP URI "sip:HOST:PORT;params".
func cutHost(uri string) (host, port string, err error) {
	hp := strings.TrimPrefix(strings.TrimPrefix(uri, "sips:"), "sip:")
	if i := strings.IndexByte(hp, ';'); i >= 0 {
		hp = hp[:i]
	}
	return net.SplitHostPort(hp)
}
