package main

import "syscall"

// childSysProcAttr puts a child process in its own process group, so that a
// Ctrl-C in the terminal reaches only client-demo, which then stops the
// child itself; and has the kernel send the child SIGTERM should
// client-demo die without stopping it (strictly: should the OS thread that
// started the child exit, which the Go runtime does not do to its threads
// unless a goroutine locked to one ends).
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
