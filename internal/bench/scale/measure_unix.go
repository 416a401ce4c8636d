//go:build unix

package main

import (
	"syscall"
	"time"
)

// processCPU returns the process's user + system CPU time (getrusage).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseHardLimit raises the hard RLIMIT_NOFILE to need, which only a
// privileged process may; failures are ignored (the soft limit is raised
// within the hard one afterwards).
func raiseHardLimit(need uint64) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Max >= need {
		return
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: rl.Cur, Max: need})
}
