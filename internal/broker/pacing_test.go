package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
)

// perSecond counts the IdP's token requests in each second of its clock.
type perSecond struct {
	mu     sync.Mutex
	counts map[int64]int
	n429   int
}

func (p *perSecond) event(ev fakeidp.Event) {
	if ev.Path != fakeidp.TokenPath {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts == nil {
		p.counts = make(map[int64]int)
	}
	if ev.Status == 429 {
		p.n429++
		return
	}
	p.counts[ev.Time.Unix()]++
}

func (p *perSecond) reset() {
	p.mu.Lock()
	p.counts, p.n429 = nil, 0
	p.mu.Unlock()
}

func (p *perSecond) max() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := 0
	for _, n := range p.counts {
		m = max(m, n)
	}
	return m
}

// Many credentials whose tokens expire within the same minute, an IdP that
// allows R token requests a second (429 beyond), and callers reading every
// credential. With R enough for the refresh-ahead window, every credential
// is refreshed before expiry and no call waits for the IdP; with R too low,
// the backlog is reported, callers of expired credentials wait for their
// own refresh only, and the IdP never sees more than R a second.
func TestRefreshAheadRespectsTheIdP(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rate   int // the IdP's and the Pacer's limit, per second
		enough bool
	}{
		{"rate enough", 10, true},
		{"rate too low", 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const n = 400
				counts := &perSecond{}
				e := newEnv(t, fakeidp.Options{AccessTokenTTL: 10 * time.Minute, OnEvent: counts.event})
				seeder := e.broker(nil) // unpaced: the first tokens all issued within a few seconds
				ctx := context.Background()
				ids := make([]string, n)
				for i := range ids {
					ids[i] = fmt.Sprintf("cred-%03d", i)
					e.credential(seeder, ids[i])
					if _, err := seeder.GetToken(ctx, ids[i], 0); err != nil {
						t.Fatal(err)
					}
					if i%50 == 0 {
						time.Sleep(time.Second)
					}
				}
				counts.reset()
				e.idp.SetMaxRate(tc.rate)
				e.cfg.Pacer = &memstore.Pacer{Rate: float64(tc.rate), MaxConcurrent: 4}
				obs := &observer{}
				b := e.broker(obs)
				obs.served[broker.FromRefresh].Store(0)
				stalled, retried := 0, 0
				// Callers read every credential every 5 s for 11 minutes,
				// past every first token's expiry.
				for round := 0; round < 11*60/5; round++ {
					for _, id := range ids {
						tok, err := b.GetToken(ctx, id, 0)
						if errors.Is(err, broker.ErrIdPUnavailable) || errors.Is(err, broker.ErrStoreUnavailable) {
							retried++ // its refresh waits for the IdP's turn: the caller retries
							continue
						}
						if err != nil {
							t.Fatalf("round %d, %s: %v", round, id, err)
						}
						if time.Until(tok.Expiry) <= 0 {
							t.Fatalf("served an expired token of %s", id)
						}
					}
					if q, behind := b.Backlog(); behind > 0 {
						stalled = max(stalled, q)
					}
					time.Sleep(5 * time.Second)
				}
				waited := obs.served[broker.FromRefresh].Load()
				t.Logf("rate %d/s: %d calls waited for the IdP, %d told to retry, largest backlog behind expiry %d, busiest second %d requests, %d answered 429",
					tc.rate, waited, retried, stalled, counts.max(), counts.n429)
				if m := counts.max(); m > tc.rate {
					t.Fatalf("the IdP saw %d requests in one second; want at most %d", m, tc.rate)
				}
				if counts.n429 != 0 {
					t.Fatalf("%d requests were answered 429: the pacing let more through than the IdP allows", counts.n429)
				}
				if st := e.idp.Stats(); st.Reuses != 0 {
					t.Fatalf("%d reuses", st.Reuses)
				}
				if tc.enough {
					if waited != 0 || stalled != 0 || retried != 0 {
						t.Fatalf("%d calls waited for the IdP, backlog %d behind; want 0 with rate enough for the window", waited, stalled)
					}
					return
				}
				if stalled == 0 || waited+int64(retried) == 0 {
					t.Fatalf("with the rate too low: backlog behind %d, %d calls waited; want both reported", stalled, waited)
				}
			})
		})
	}
}
