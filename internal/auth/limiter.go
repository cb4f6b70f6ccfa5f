package auth

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// minSweepInterval is the least time between two sweeps of idle clients, so
// that a high rate (a short refill time) does not make every call walk the
// whole map.
const minSweepInterval = time.Minute

// Limiter limits, per client, how often the costly methods may be called
// (grpcapi applies it, as a grpcapi.Limiter, to the methods that may call
// the IdP): a token bucket of a rate and a burst for each client id. It is
// safe for concurrent use.
//
// Memory is bounded without a background goroutine. A client's bucket that
// has not been used for burst/rate is full again, so forgetting it changes
// no answer; such buckets are dropped by a sweep that runs within a call to
// Allow at most once per max(burst/rate, 1 minute). The Limiter thus holds at
// most one small bucket for each client that called within the last two such
// intervals, and never more than the number of distinct ids it is given;
// keyed by authenticated client ids, that is at most the client registry.
type Limiter struct {
	limit rate.Limit
	burst int
	idle  time.Duration // a bucket unused this long is full
	every time.Duration // time between sweeps
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

// NewLimiter returns a Limiter that lets each client make burst calls at once
// and r calls per second on average. rate.Inf lets every call through. It
// panics if r is not positive or burst is less than 1, as those would refuse
// every call.
func NewLimiter(r rate.Limit, burst int) *Limiter {
	if r <= 0 || burst < 1 {
		panic("auth: NewLimiter needs a positive rate and a burst of at least 1")
	}
	l := &Limiter{limit: r, burst: burst, now: time.Now, buckets: make(map[string]*bucket)}
	if r != rate.Inf {
		l.idle = time.Duration(math.MaxInt64) // never idle: a refill time too long to represent
		if secs := float64(burst) / float64(r); secs < float64(math.MaxInt64/int64(time.Second)) {
			l.idle = time.Duration(math.Ceil(secs * float64(time.Second)))
		}
		l.every = max(l.idle, minSweepInterval)
	}
	return l
}

// Allow reports whether clientID may make a call now, and if not, how long
// until it may. A refused call uses up nothing.
func (l *Limiter) Allow(clientID string) (ok bool, retryAfter time.Duration) {
	if l.limit == rate.Inf {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.swept) >= l.every {
		l.sweep(now)
	}
	b := l.buckets[clientID]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.limit, l.burst)}
		l.buckets[clientID] = b
	}
	b.last = now
	r := b.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// sweep drops the buckets that are full again. l.mu is held.
func (l *Limiter) sweep(now time.Time) {
	for id, b := range l.buckets {
		if now.Sub(b.last) >= l.idle {
			delete(l.buckets, id)
		}
	}
	l.swept = now
}
