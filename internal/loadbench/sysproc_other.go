//go:build !linux

package loadbench

import (
	"syscall"
	"time"
)

// childSysProcAttr returns nil: children keep the defaults outside Linux.
func childSysProcAttr() *syscall.SysProcAttr { return nil }

// processCPU returns 0: CPU time is only measured on Linux.
func processCPU() time.Duration { return 0 }
