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

// SetLatency makes every later token request wait d (real time) before it is
// looked at, after any stall.
//
// A request whose client goes away while it waits (a stall, the latency) is
// still processed once the wait is over, as a real server does: a refresh
// rotates, and the answer is written to the dead connection; its Event has
// ClientGone set. SetDropAbandoned switches to dropping such requests
// unprocessed instead. A request still waiting when the Server closes is
// always dropped unprocessed and without an answer; its Event has Abandoned
// set.
func (s *Server) SetLatency(d time.Duration) {
	s.kmu.Lock()
	s.latency = max(d, 0)
	s.kmu.Unlock()
}

// SetDropAbandoned switches what happens to a token request whose client
// goes away while it waits out a stall or the latency. Off (the default),
// the request is processed anyway when the wait ends, as Dex and every real
// server do; on, it is dropped at once, unprocessed and unanswered (Event
// has Abandoned and ClientGone set), as a server that aborts work for a
// departed client would. It applies to requests already waiting too.
func (s *Server) SetDropAbandoned(on bool) {
	s.kmu.Lock()
	s.dropAbandoned = on
	s.kmu.Unlock()
}

// Pause stalls every later token request, and every one arriving while
// paused, once its body is read and before anything else happens to it,
// until Resume: the IdP is frozen (say, SIGSTOPped) while connections are
// accepted. A client that gives up meanwhile does not end its request (see
// SetLatency). Requests to the protected resource are not stalled.
func (s *Server) Pause() {
	s.kmu.Lock()
	s.paused = true
	s.kmu.Unlock()
}

// StallNext stalls the next n token requests as Pause does, while later ones
// pass. It replaces an earlier StallNext that has not run out; n <= 0
// cancels it (requests already stalled stay so until Resume).
func (s *Server) StallNext(n int) {
	s.kmu.Lock()
	s.stallNext = max(n, 0)
	s.kmu.Unlock()
}

// Resume ends Pause and cancels a pending StallNext, and lets every stalled
// request go on: it is then processed (after the latency) whether or not its
// client is still there.
func (s *Server) Resume() {
	s.kmu.Lock()
	s.paused, s.stallNext = false, 0
	close(s.release)
	s.release = make(chan struct{})
	s.kmu.Unlock()
}

// StallState describes the stall knobs and the token requests stalled now.
type StallState struct {
	Paused  bool // Pause is in effect
	Pending int  // stalls left from StallNext
	// Held is the number of token requests stalled now.
	Held int
	// ClientGone is the number of the Held requests whose client has gone
	// away meanwhile (they stay held; see SetDropAbandoned).
	ClientGone int
}

// StallState returns the stall knobs and how many requests are held.
func (s *Server) StallState() StallState {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	return s.stallStateLocked()
}

func (s *Server) stallStateLocked() StallState {
	return StallState{Paused: s.paused, Pending: s.stallNext, Held: s.held, ClientGone: s.heldGone}
}

// WaitStall waits until cond, called on each change of the stall state,
// returns true, so that a test can synchronise on a request being held, or
// on its client having given up, without sleeping. It returns ctx's error
// if ctx ends first, and ErrClosed if the Server closes first.
func (s *Server) WaitStall(ctx context.Context, cond func(StallState) bool) error {
	for {
		s.kmu.Lock()
		st, changed := s.stallStateLocked(), s.stallCh
		s.kmu.Unlock()
		if cond(st) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrClosed
		}
	}
}

// stallChanged wakes WaitStall. Call with s.kmu held.
func (s *Server) stallChanged() {
	close(s.stallCh)
	s.stallCh = make(chan struct{})
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
	if s.maxRate > 0 {
		sec := s.now().Truncate(time.Second)
		if !sec.Equal(s.rateSec) {
			s.rateSec, s.rateCount = sec, 0
		}
		if s.rateCount >= s.maxRate {
			return injected{kind: FaultRateLimit, status: http.StatusTooManyRequests, retryAfter: time.Second}, true
		}
		s.rateCount++
	}
	return injected{}, false
}

// SetMaxRate makes the token endpoint answer 429 with a Retry-After of one
// second to every request beyond perSecond in one second of the Server's
// clock (Options.Now), as an IdP's per-client rate limit does; 0 turns the
// limit off. Requests it answers 429 are not looked at.
func (s *Server) SetMaxRate(perSecond int) {
	s.kmu.Lock()
	s.maxRate = max(perSecond, 0)
	s.kmu.Unlock()
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

func (s *Server) dropsAbandoned() bool {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	return s.dropAbandoned
}

// hold is one token request waiting out a stall and the latency.
type hold struct {
	s          *Server
	gone       <-chan struct{} // the request's ctx.Done until the client left
	stalled    bool
	clientGone bool
}

// wait waits out a stall, if one applies, then the latency. It returns false
// when the request is to be dropped unprocessed: the Server closed, or the
// client went away and DropAbandoned is on (now, or when it left).
func (h *hold) wait() bool {
	if !h.stall() || !h.sleep(h.s.currentLatency()) {
		return false
	}
	return !h.clientGone || !h.s.dropsAbandoned()
}

// left notes that the client went away; false when the request is then to
// be dropped.
func (h *hold) left() bool {
	h.gone, h.clientGone = nil, true
	return !h.s.dropsAbandoned()
}

func (h *hold) stall() bool {
	s := h.s
	s.kmu.Lock()
	if !s.paused && s.stallNext == 0 {
		s.kmu.Unlock()
		return true
	}
	if !s.paused {
		s.stallNext--
	}
	s.held++
	s.stallChanged()
	release := s.release
	s.kmu.Unlock()
	h.stalled = true
	s.stats.stalled.Add(1)

	counted := false // in s.heldGone
	defer func() {
		s.kmu.Lock()
		s.held--
		if counted {
			s.heldGone--
		}
		s.stallChanged()
		s.kmu.Unlock()
	}()
	for {
		select {
		case <-release:
			return true
		case <-s.done:
			return false
		case <-h.gone:
			s.kmu.Lock()
			s.heldGone++
			s.stallChanged()
			s.kmu.Unlock()
			counted = true
			if !h.left() {
				return false
			}
		}
	}
}

func (h *hold) sleep(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-h.s.done:
			return false
		case <-h.gone:
			if !h.left() {
				return false
			}
		}
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
