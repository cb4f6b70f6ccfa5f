package main

import (
	"runtime"
	"runtime/debug"
)

// version and revision are stamped at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.revision=$(git rev-parse HEAD)" ./cmd/broker
//
// (deploy/Dockerfile and make image do). Unstamped, they come from the
// module's build information when there is any.
var (
	version  = ""
	revision = ""
)

// buildVersion returns the version, revision and Go version of this binary.
func buildVersion() (v, rev, goVersion string) {
	v, rev = version, revision
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && rev == "" {
				rev = s.Value
			}
		}
	}
	if v == "" {
		v = "devel"
	}
	if rev == "" {
		rev = "unknown"
	}
	return v, rev, runtime.Version()
}

// versionLine is what --version prints.
func versionLine() string {
	v, rev, gov := buildVersion()
	return "broker " + v + " (revision " + rev + ", " + gov + ")"
}
