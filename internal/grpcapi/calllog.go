package grpcapi

import (
	"net"
	"regexp"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// failureLogInterval is the least time between two WARN lines about failed
// calls of one credential: a storm of callers failing on the same cause
// logs it once per interval, with the count of lines left out.
const failureLogInterval = 10 * time.Second

// serverFailure reports whether code says the server (or what it depends
// on: the Store, the IdP, the credential's grant) failed the call, rather
// than the caller asking for something wrong. Those are logged at WARN.
func serverFailure(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.FailedPrecondition, codes.Aborted,
		codes.Internal, codes.Unknown, codes.DataLoss:
		return true
	}
	return false
}

// logLimiter allows one line per key per interval.
type logLimiter struct {
	mu   sync.Mutex
	last map[string]*limited
}

type limited struct {
	at         time.Time
	suppressed int
}

// maxLimited bounds the keys a logLimiter remembers.
const maxLimited = 10_000

// allow reports whether a line for key may be logged now and, if so, how
// many were left out since the last one.
func (l *logLimiter) allow(key string, now time.Time, every time.Duration) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil || len(l.last) > maxLimited {
		l.last = map[string]*limited{}
	}
	e := l.last[key]
	if e == nil {
		l.last[key] = &limited{at: now}
		return true, 0
	}
	if now.Sub(e.at) < every {
		e.suppressed++
		return false, 0
	}
	n := e.suppressed
	e.at, e.suppressed = now, 0
	return true, n
}

// addressPattern matches the network addresses an error from the
// transport may name (a resolver, a dialled IP, with or without port).
var addressPattern = regexp.MustCompile(`\[[0-9A-Fa-f:.%]+\](:\d+)?|\b(\d{1,3}\.){3}\d{1,3}(:\d+)?\b|\b[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4})*::[0-9A-Fa-f:]*\b`)

// scrubAddresses replaces the IP addresses in msg with "[address]".
func scrubAddresses(msg string) string {
	return addressPattern.ReplaceAllStringFunc(msg, func(m string) string {
		host := m
		if h, _, err := net.SplitHostPort(m); err == nil {
			host = h
		}
		if net.ParseIP(host) == nil && net.ParseIP(trimBrackets(host)) == nil {
			return m
		}
		return "[address]"
	})
}

func trimBrackets(s string) string {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		return s[1 : len(s)-1]
	}
	return s
}

// forCaller is st as a caller that is not an admin may see it: without the
// network addresses an error from the transport may name (admins see the
// whole message, and so does the server's log).
func forCaller(st *status.Status, admin bool) *status.Status {
	if admin || st.Code() == codes.OK {
		return st
	}
	msg := scrubAddresses(st.Message())
	if msg == st.Message() {
		return st
	}
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p)
}
