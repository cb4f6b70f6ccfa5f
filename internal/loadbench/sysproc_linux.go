package loadbench

import (
	"syscall"
	"time"
)

// childSysProcAttr puts a child process in its own process group, so that a
// Ctrl-C in the terminal reaches only the benchmark, which then stops the
// child itself; and has the kernel send the child SIGTERM should the
// benchmark die without stopping it.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// processCPU is the CPU time (user and system) the process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
