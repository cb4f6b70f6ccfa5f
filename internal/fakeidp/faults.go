package fakeidp

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Fault names a misbehaviour injected into a token request.
type Fault string

// Faults, as reported in Event.Fault.
const (
	// FaultStatus: answered with a 5xx status and a plain-text body, before
	// the request was looked at (FailNext or the failure rate).
	FaultStatus Fault = "status"
	// FaultRateLimit: answered 429 with Retry-After, before the request was
	// looked at (RateLimitNext).
	FaultRateLimit Fault = "rate_limit"
	// FaultLostReply: the request was processed (a refresh rotated) and the
	// connection was then closed without an answer (LoseReplyNext).
	FaultLostReply Fault = "lost_reply"
)

// SetLatency makes every later token request wait d before it is looked at.
// A request whose client goes away during the wait, or that is still waiting
// when the Server closes, is dropped unprocessed and without an answer; its
// Event has Abandoned set.
func (s *Server) SetLatency(d time.Duration) {
	s.kmu.Lock()
	s.latency = max(d, 0)
	s.kmu.Unlock()
}

// FailNext makes the next n token requests fail with status, which must be
// a 5xx code, before they are looked at (nothing is spent). It replaces an
// earlier FailNext that has not run out; n <= 0 cancels it.
func (s *Server) FailNext(n int, status int) {
	if status < 500 || status > 599 {
		panic(fmt.Sprintf("fakeidp: FailNext status %d is not 5xx", status))
	}
	s.kmu.Lock()
	s.failNext, s.failStatus = max(n, 0), status
	s.kmu.Unlock()
}

// RateLimitNext makes the next n token requests fail with 429 and a
// Retry-After header of retryAfter (whole seconds, rounded up) before they
// are looked at. It replaces an earlier RateLimitNext; n <= 0 cancels it.
// FailNext takes precedence when both are pending.
func (s *Server) RateLimitNext(n int, retryAfter time.Duration) {
	s.kmu.Lock()
	s.rateNext, s.retryAfter = max(n, 0), max(retryAfter, 0)
	s.kmu.Unlock()
}

// LoseReplyNext makes the next n token requests that reach grant processing
// lose their answer: the grant runs (a refresh rotates, a reuse revokes) and
// the connection is closed without a response. It replaces an earlier
// LoseReplyNext; n <= 0 cancels it.
func (s *Server) LoseReplyNext(n int) {
	s.kmu.Lock()
	s.loseNext = max(n, 0)
	s.kmu.Unlock()
}

// SetFailureRate makes each later token request fail with 503, before it is
// looked at, with probability p (clamped to [0, 1]). The draws come from a
// generator seeded by Options.RandSeed.
func (s *Server) SetFailureRate(p float64) {
	s.kmu.Lock()
	s.failureRate = min(max(p, 0), 1)
	s.kmu.Unlock()
}

// injected is a fault decided before a request is looked at.
type injected struct {
	kind       Fault
	status     int
	retryAfter time.Duration
}

// takeFault consumes one pending early fault, if any.
func (s *Server) takeFault() (injected, bool) {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	switch {
	case s.failNext > 0:
		s.failNext--
		return injected{kind: FaultStatus, status: s.failStatus}, true
	case s.rateNext > 0:
		s.rateNext--
		return injected{kind: FaultRateLimit, status: http.StatusTooManyRequests, retryAfter: s.retryAfter}, true
	case s.failureRate > 0 && s.rng.Float64() < s.failureRate:
		return injected{kind: FaultStatus, status: http.StatusServiceUnavailable}, true
	}
	return injected{}, false
}

// takeLoseReply consumes one pending lost reply, if any.
func (s *Server) takeLoseReply() bool {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if s.loseNext > 0 {
		s.loseNext--
		return true
	}
	return false
}

func (s *Server) currentLatency() time.Duration {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	return s.latency
}

// sleep waits d; false when ctx ended or the Server closed first.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.done:
		return false
	}
}

// writeFault answers with an injected early fault.
func writeFault(w http.ResponseWriter, f injected) {
	noStore(w.Header())
	if f.kind == FaultRateLimit {
		secs := (f.retryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", strconv.FormatInt(int64(secs), 10))
		writeJSON(w, f.status, errorBody{Error: "too_many_requests", Description: "Rate limit exceeded"})
		return
	}
	// A 5xx from a gateway rarely carries OAuth JSON; plain text makes
	// clients cope with that.
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(f.status)
	fmt.Fprintf(w, "%d %s (injected by fakeidp)\n", f.status, http.StatusText(f.status))
}

// dropConnection closes the client's connection without an answer.
func dropConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot hijack; aborting the handler resets the stream
		// without an answer instead.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
