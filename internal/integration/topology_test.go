package integration_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// The multi-replica invariant over the replicated topologies that
// production runs: a Sentinel set (master, replica, three sentinels) and a
// 3-master Cluster, each started on free ports. Several brokers, many
// callers, the strict IdP: no spent refresh token is ever presented, and
// calls fail only while the credential's master is gone, and then with a
// retryable error.

// fleet is brokers on one replicated Redis and one strict IdP.
type fleet struct {
	t       *testing.T
	idp     *fakeidp.Server
	brokers []*broker.Broker
	admin   context.Context
	obs     regressions
}

// regressions records the generation regressions the brokers report.
type regressions struct {
	observer
	t   *testing.T
	mu  sync.Mutex
	evs []broker.RegressionEvent
}

func (r *regressions) Regressed(ev broker.RegressionEvent) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

// tagged is a broker's view of the fleet's shared observer: it names the
// broker in what it logs.
type tagged struct {
	*regressions
	n int
}

func (o *tagged) Regressed(ev broker.RegressionEvent) {
	o.regressions.t.Logf("broker %d: generation regression, seen %d, stored %d, repaired %v, error %v", o.n, ev.Seen, ev.Stored, ev.Repaired, ev.Err)
	o.regressions.Regressed(ev)
}

func (r *regressions) repaired() (seen, repaired int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range r.evs {
		if ev.Repaired {
			repaired++
		}
	}
	return len(r.evs), repaired
}

func newFleet(t *testing.T, url string, n int, acks int, idpOpts fakeidp.Options) *fleet {
	t.Helper()
	idpOpts.Clients = map[string]string{clientID: secret}
	f := &fleet{t: t, idp: fakeidptest.Start(t, idpOpts),
		admin: broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})}
	f.obs.t = t
	prefix := "tb" + randomHex(4)
	for range n {
		client, err := redisstore.NewClient(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		s, err := redisstore.New(client, redisstore.Options{Prefix: prefix, AllowPlaintext: true, MinReplicaAcks: acks})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		b, err := broker.New(s, &upstream.Client{}, broker.Config{
			Open: true, RefreshTimeout: time.Second, RefreshReplyWait: 3 * time.Second,
			LockTTL: 3 * time.Second, LockWait: 3 * time.Second, PollInterval: 50 * time.Millisecond,
			BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
			Observer: &tagged{&f.obs, len(f.brokers)},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		f.brokers = append(f.brokers, b)
	}
	return f
}

// credential seeds id, retrying while the topology settles.
func (f *fleet) credential(id string) {
	f.t.Helper()
	rt := f.idp.Seed(clientID)
	eventually(f.t, "the credential to be put", func() bool {
		_, err := f.brokers[0].PutCredential(f.admin, broker.Credential{ID: id, TokenURL: f.idp.TokenURL(),
			ClientID: clientID, ClientSecrets: []string{secret}}, rt)
		return err == nil
	})
}

// load is callers asking for tokens of ids on random brokers until stop is
// closed; it counts calls and failures, and remembers any failure that is
// not retryable.
type load struct {
	calls, failed atomic.Int64
	mu            sync.Mutex
	bad           []error
	wg            sync.WaitGroup
	stop          chan struct{}
}

func (f *fleet) startLoad(callers int, ids ...string) *load {
	l := &load{stop: make(chan struct{})}
	for i := range callers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for n := 0; n < 100000; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				b := f.brokers[(i+n)%len(f.brokers)]
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := b.GetToken(ctx, ids[rand.IntN(len(ids))], 100*time.Millisecond)
				cancel()
				l.calls.Add(1)
				if err != nil {
					l.failed.Add(1)
					if !retryable(err) && !errors.Is(err, broker.ErrIdPUnavailable) {
						l.mu.Lock()
						l.bad = append(l.bad, err)
						l.mu.Unlock()
					}
					time.Sleep(50 * time.Millisecond) // a caller's retry pace
				} else {
					time.Sleep(time.Duration(5+rand.IntN(10)) * time.Millisecond)
				}
			}
		}()
	}
	return l
}

func (l *load) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("%d calls, %d failed (retryable)", l.calls.Load(), l.failed.Load())
	if len(l.bad) > 0 {
		t.Fatalf("%d calls failed with an error that is not retryable, first: %v", len(l.bad), l.bad[0])
	}
}

// refreshes waits until the IdP refreshed n more times.
func (f *fleet) refreshes(n int64) {
	f.t.Helper()
	want := f.idp.Stats().Refreshes + n
	deadline := time.Now().Add(20 * time.Second)
	for f.idp.Stats().Refreshes < want {
		if time.Now().After(deadline) {
			for i, b := range f.brokers {
				_, err := b.GetToken(context.Background(), "cred", 0)
				rec, gerr := b.GetCredential(f.admin, "cred")
				if gerr != nil {
					f.t.Logf("broker %d: GetToken %v; GetCredential %v", i, err, gerr)
					continue
				}
				f.t.Logf("broker %d: GetToken %v; stored generation %d, pending %+v, state %v, last error %q", i, err, rec.Generation, rec.Pending, rec.State, rec.LastError)
			}
			f.t.Fatalf("timed out waiting for %d more refreshes (IdP %+v)", n, f.idp.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// check asserts the invariant and that every credential is served again.
func (f *fleet) check(ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		for i, b := range f.brokers {
			eventually(f.t, fmt.Sprintf("broker %d to serve %s", i, id), func() bool {
				_, err := b.GetToken(context.Background(), id, 0)
				return err == nil
			})
		}
	}
	st := f.idp.Stats()
	f.t.Logf("IdP: %d refreshes, %d spent-token presentations, %d revocations", st.Refreshes, st.Reuses, st.Revocations)
	if st.Reuses != 0 || st.Revocations != 0 {
		f.t.Fatalf("%d spent refresh tokens presented, %d families revoked; want 0", st.Reuses, st.Revocations)
	}
}

// Sentinel: the master is killed (SIGKILL) in the middle of a load, with
// the replica in sync, and with the replica lagging behind the last
// refresh's outcome (stopped and cut off from the master before the
// commit: the write is really lost in the failover). The fleet fails over,
// and no rotation is lost: with the replica in sync it was acknowledged
// (WAIT); with it lagging, the replica that stored the outcome finds the
// generation gone back and writes the outcome again.
func TestSentinelFailoverLosesNoRotation(t *testing.T) {
	t.Parallel()
	for _, lag := range []bool{false, true} {
		t.Run(fmt.Sprintf("lagging replica=%v", lag), func(t *testing.T) {
			t.Parallel()
			s := redistest.StartSentinel(t)
			var lagged atomic.Bool
			var f *fleet
			idpOpts := fakeidp.Options{AccessTokenTTL: time.Second, OnEvent: func(ev fakeidp.Event) {
				if lag && ev.Path == fakeidp.TokenPath && ev.Status == 200 && f != nil && f.idp.Stats().Refreshes >= 4 && lagged.CompareAndSwap(false, true) {
					s.LagReplica() // before this refresh's outcome reaches the master
				}
			}}
			f = newFleet(t, s.URL(), 3, redisstore.AutoReplicaAcks, idpOpts)
			f.credential("cred")
			l := f.startLoad(30, "cred")
			f.refreshes(4)
			if lag {
				eventually(t, "the replica to lag", lagged.Load)
				f.refreshes(1) // committed on the master alone
			}
			s.KillMaster()
			if lag {
				s.ContReplica()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s.WaitForFailover(ctx)
			f.refreshes(3) // the fleet refreshes on the new master
			l.end(t)
			f.check("cred")
			seen, repaired := f.obs.repaired()
			t.Logf("generation regressions seen %d, repaired %d", seen, repaired)
			if lag && repaired == 0 {
				t.Fatal("the failover to the lagging replica lost no write: the test did not make the lag real")
			}
		})
	}
}

// Cluster: with one master stopped, only the credentials in its slots fail,
// and with a retryable error; the others keep refreshing and serving. Once
// it is back, every credential is served, and no spent token was presented.
func TestClusterMasterOutageAffectsOnlyItsSlots(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 0)
	f := newFleet(t, c.URL(), 3, 0, fakeidp.Options{AccessTokenTTL: time.Second})
	var ids []string
	for i := range 12 {
		id := fmt.Sprintf("cred-%d", i)
		f.credential(id)
		ids = append(ids, id)
	}
	down := c.MasterOf("tokenbroker:{" + ids[0] + "}:cred")
	var on, off []string
	for _, id := range ids {
		if c.MasterOf("tokenbroker:{"+id+"}:cred").Addr() == down.Addr() {
			off = append(off, id)
		} else {
			on = append(on, id)
		}
	}
	if len(on) == 0 {
		t.Skip("every credential hashed to one master")
	}
	l := f.startLoad(20, ids...)
	f.refreshes(int64(len(ids)))
	l.end(t)

	down.Pause()
	c.WaitFailed(down)
	for _, id := range on { // refreshed and served without the stopped master
		if _, err := f.brokers[1].RefreshCredential(f.admin, id); err != nil && !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("%s, whose master is up: %v", id, err)
		}
		if _, err := f.brokers[2].GetToken(context.Background(), id, 0); err != nil {
			t.Fatalf("%s, whose master is up: %v", id, err)
		}
	}
	for _, id := range off {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := f.brokers[1].RefreshCredential(broker.NewContext(ctx, broker.Caller{ID: "ops", Admin: true}), id)
		cancel()
		if err == nil || !(retryable(err) || errors.Is(err, broker.ErrRateLimited)) {
			t.Fatalf("%s, whose master is stopped: %v; want a retryable error", id, err)
		}
	}
	down.Resume()
	c.WaitOK()
	f.check(ids...)
}
