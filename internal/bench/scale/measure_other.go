//go:build !unix

package main

import "time"

// processCPU is unknown on this platform: zero.
func processCPU() time.Duration { return 0 }

// raiseHardLimit does nothing on this platform.
func raiseHardLimit(uint64) {}
