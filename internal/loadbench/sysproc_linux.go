package loadbench

import "syscall"

// childSysProcAttr puts a child process in its own process group, so that a
// Ctrl-C in the terminal reaches only the benchmark, which then stops the
// child itself; and has the kernel send the child SIGTERM should the
// benchmark die without stopping it.
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
