package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/relinkgo/relink/internal/testkit"
)

// mem is what the process holds after a GC.
type mem struct {
	heap       uint64 // HeapInuse + StackInuse, bytes
	heapInuse  uint64
	stackInuse uint64
	goroutines int
}

// snapshot collects garbage (twice, so that finalizers' leftovers go too,
// and returns freed memory to the OS) and reads what is left.
func snapshot() mem {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapInuse + ms.StackInuse, heapInuse: ms.HeapInuse, stackInuse: ms.StackInuse,
		goroutines: runtime.NumGoroutine()}
}

// minus returns m's growth over base (zero where it shrank).
func (m mem) minus(base mem) mem {
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	return mem{heap: sub(m.heap, base.heap), heapInuse: sub(m.heapInuse, base.heapInuse),
		stackInuse: sub(m.stackInuse, base.stackInuse), goroutines: m.goroutines - base.goroutines}
}

// cpuMeter measures the process's CPU (user + system) and wall time over a
// window, optionally with a CPU profile.
type cpuMeter struct {
	cpu0  time.Duration
	wall0 time.Time
	prof  *os.File
}

func startCPU(pprofDir, name string) (*cpuMeter, error) {
	m := &cpuMeter{}
	if pprofDir != "" {
		if err := os.MkdirAll(pprofDir, 0o755); err != nil {
			return nil, err
		}
		f, err := os.Create(filepath.Join(pprofDir, name+"-cpu.pb.gz"))
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return nil, err
		}
		m.prof = f
	}
	m.cpu0, m.wall0 = processCPU(), time.Now()
	return m, nil
}

// stop returns the CPU time and the wall time since start.
func (m *cpuMeter) stop() (cpu, wall time.Duration) {
	cpu, wall = processCPU()-m.cpu0, time.Since(m.wall0)
	if m.prof != nil {
		pprof.StopCPUProfile()
		_ = m.prof.Close()
	}
	return cpu, wall
}

// writeProfiles writes the heap (after a GC) and goroutine profiles into
// dir as NAME-heap.pb.gz and NAME-goroutine.txt; no-op without a dir.
func writeProfiles(dir, name string) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	runtime.GC()
	for _, p := range []struct {
		profile, file string
		debug         int
	}{{"heap", name + "-heap.pb.gz", 0}, {"goroutine", name + "-goroutine.txt", 1}} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			return err
		}
		err = pprof.Lookup(p.profile).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s profile: %w", p.profile, err)
		}
	}
	return nil
}

// profileAllocs samples one allocation in every 64 bytes when profiles
// are asked for (instead of one in 512 KiB), so that the heap profile
// attributes small per-connection objects precisely. It must run before
// the allocations measured.
func profileAllocs(pprofDir string) {
	if pprofDir != "" {
		runtime.MemProfileRate = 64
	}
}

// raiseFDs raises the file limit towards need: as root the hard limit too
// (up to the kernel's nr_open), then the soft limit as far as the hard one
// allows (testkit.RaiseFileLimit). It returns the soft limit in force.
func raiseFDs(need uint64) (uint64, error) {
	raiseHardLimit(need)
	got, err := testkit.RaiseFileLimit(need)
	if err == nil && got < need {
		err = fmt.Errorf("file limit %d, below the %d descriptors asked for (run as root, or ulimit -n)", got, need)
	}
	return got, err
}

// loopbackDrops returns the packets the host's per-CPU input backlogs
// dropped so far (the second column of /proc/net/softnet_stat, summed):
// loopback traffic goes through them. Zero where unknown.
func loopbackDrops() uint64 {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0
	}
	var n uint64
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			v, _ := strconv.ParseUint(f[1], 16, 64)
			n += v
		}
	}
	return n
}

// backlogFile is the host's per-CPU input backlog, which loopback segments
// go through.
const backlogFile = "/proc/sys/net/core/netdev_max_backlog"

// raiseBacklog sets net.core.netdev_max_backlog to at least n (root only)
// and returns the value in force and a function that restores the old one;
// n ≤ 0 changes nothing.
func raiseBacklog(n int) (inForce int, restore func(), err error) {
	restore = func() {}
	b, err := os.ReadFile(backlogFile)
	if err != nil {
		return 0, restore, err
	}
	old, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n <= old {
		return old, restore, err
	}
	if err := os.WriteFile(backlogFile, []byte(strconv.Itoa(n)), 0o644); err != nil {
		return old, restore, fmt.Errorf("scale: set netdev_max_backlog (root only): %w", err)
	}
	return n, func() { _ = os.WriteFile(backlogFile, []byte(strconv.Itoa(old)), 0o644) }, nil
}
