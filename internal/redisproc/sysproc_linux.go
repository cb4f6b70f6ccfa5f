package redisproc

import "syscall"

// sysProcAttr puts the server in its own process group, so a terminal's
// Ctrl-C reaches only the parent, which then stops it in order; and has the
// kernel kill it if the parent dies first (Pdeathsig fires when the OS
// thread that started it exits; Go's runtime keeps its threads).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
