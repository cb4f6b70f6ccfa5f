//go:build !linux

package loadbench

import "syscall"

// childSysProcAttr returns nil: children keep the defaults outside Linux.
func childSysProcAttr() *syscall.SysProcAttr { return nil }
