//go:build unix

package testkit

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises the soft RLIMIT_NOFILE towards need descriptors, as
// far as the hard limit allows, for a test or benchmark that opens many
// sockets. It returns the soft limit now in force; when the limit cannot be
// read it returns need and tries nothing.
func RaiseFileLimit(need uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return need, nil // not knowable here; try anyway
	}
	if rl.Cur >= need {
		return rl.Cur, nil
	}
	old := rl.Cur
	rl.Cur = min(need, rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return old, fmt.Errorf("testkit: raise RLIMIT_NOFILE to %d: %w", rl.Cur, err)
	}
	return rl.Cur, nil
}
