//go:build !unix

package testkit

// RaiseFileLimit does nothing on this platform and returns need.
func RaiseFileLimit(need uint64) (uint64, error) { return need, nil }
