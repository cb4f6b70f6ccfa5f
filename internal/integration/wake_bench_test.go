package integration_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// landing records when a replica stored a refresh.
type landing struct {
	observer
	at chan time.Time
}

func (l *landing) Refreshed(ev broker.RefreshEvent) {
	if ev.Outcome == broker.OutcomeOK {
		l.at <- time.Now()
	}
}

// BenchmarkWakeAcrossReplicas measures how soon after a refresh is stored on
// one replica the callers waiting on the other replicas get the token: 3
// replicas on one Redis, 20 callers on each, an IdP answering in 50 ms. Each
// iteration re-seeds the credential (so its token is gone) and releases all
// callers at once; whichever replica wins the lease refreshes, and the
// others' callers are timed from that replica's commit.
func BenchmarkWakeAcrossReplicas(b *testing.B) {
	c := newCluster(b, backends[1], fakeidp.Options{Latency: 50 * time.Millisecond})
	var obs [3]*landing
	var replicas [3]*broker.Broker
	for i := range replicas {
		obs[i] = &landing{at: make(chan time.Time, 1024)}
		replicas[i], _ = c.replicaOn(func(s broker.Store) broker.Store { return s }, obs[i])
	}
	ctx := context.Background()
	var lat []time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		c.credential(replicas[0], "cred")
		time.Sleep(20 * time.Millisecond) // the re-seed's events reach every replica
		b.StartTimer()

		type result struct {
			replica int
			at      time.Time
		}
		results := make(chan result, 60)
		var wg sync.WaitGroup
		for r := range 3 {
			for range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := replicas[r].GetToken(ctx, "cred", 0); err != nil {
						b.Error(err)
						return
					}
					results <- result{r, time.Now()}
				}()
			}
		}
		wg.Wait()
		close(results)

		b.StopTimer()
		leader, landed := -1, time.Time{}
		for i := range obs {
			select {
			case landed = <-obs[i].at:
				leader = i
			default:
			}
		}
		if leader < 0 {
			b.Fatal("no replica stored a refresh")
		}
		for r := range results {
			if r.replica != leader {
				lat = append(lat, r.at.Sub(landed))
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "wake-p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "wake-p99-ms")
	}
}
