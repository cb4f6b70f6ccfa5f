//go:build !linux

package loadbench

import "time"

// processCPU returns 0: CPU time is only measured on Linux.
func processCPU() time.Duration { return 0 }

// loadAverage returns 0: it is only read on Linux.
func loadAverage() float64 { return 0 }
