package integration_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// Invariant 3, no loss, against a real redis-server: once the IdP rotated a
// refresh token, the successor is stored whatever Redis does meanwhile, and
// no replica presents the spent token. Each test counts the IdP's refresh
// requests and the spent-token presentations (Reuses).

// noLossCluster is a cluster on its own redis-server (append-only, so a
// restart keeps what was acknowledged) with short timings.
func noLossCluster(t *testing.T, idpOpts fakeidp.Options) *cluster {
	c := newCluster(t, backends[1], idpOpts, redistest.WithAppendOnly())
	c.cfg.RefreshTimeout = time.Second
	c.cfg.RefreshReplyWait = 3 * time.Second
	c.cfg.LockTTL = 3 * time.Second
	c.cfg.LockWait = 3 * time.Second
	return c
}

// afterRotation returns an IdP event hook that runs f once, right after the
// IdP rotated a refresh token and before its answer is on the wire.
func afterRotation(f *func()) func(fakeidp.Event) {
	var once sync.Once
	return func(ev fakeidp.Event) {
		if ev.Path == fakeidp.TokenPath && ev.GrantType == "refresh_token" && ev.Status == 200 && ev.Fault == "" {
			once.Do(func() { (*f)() })
		}
	}
}

// A Redis that stops answering for 30 s right after the IdP answered (paused
// with SIGSTOP, or stopped and restarted): the replica keeps the successor
// and stores it once Redis is back; nobody presents the spent token.
func TestRedisOutageRightAfterTheIdPAnswered(t *testing.T) {
	t.Parallel()
	const outage = 30 * time.Second
	for _, tc := range []struct {
		name       string
		down, back func(*redistest.Server)
	}{
		{"paused", (*redistest.Server).Pause, (*redistest.Server).Resume},
		{"restarted", (*redistest.Server).Stop, (*redistest.Server).Restart},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var down func()
			c := noLossCluster(t, fakeidp.Options{OnEvent: afterRotation(&down)})
			holder, other := c.replica(nil), c.replica(nil)
			c.credential(holder, "cred")
			seed := c.stored("cred").RefreshToken
			var downAt time.Time
			down = func() { tc.down(c.redis); downAt = time.Now() }

			ctx := context.Background()
			if _, err := holder.GetToken(ctx, "cred", 0); !retryable(err) {
				t.Fatalf("holder with Redis down after the IdP answered: %v; want a retryable error", err)
			}
			for time.Since(downAt) < outage {
				for i, b := range []*broker.Broker{holder, other} {
					cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
					_, err := b.GetToken(cctx, "cred", 0)
					cancel()
					if !retryable(err) {
						t.Fatalf("replica %d during the outage: %v; want a retryable error", i, err)
					}
				}
				time.Sleep(time.Second) // callers retry at their pace; nothing is waited for here
			}
			tc.back(c.redis)

			var tok broker.Token
			eventually(t, "the holder to store the successor", func() bool {
				rec := c.stored("cred")
				return rec.RefreshToken != seed && rec.Pending == nil
			})
			for i, b := range []*broker.Broker{holder, other} {
				eventually(t, "the replica to serve", func() bool {
					var err error
					tok, err = b.GetToken(ctx, "cred", 0)
					return err == nil
				})
				if !c.accepted(tok.AccessToken) {
					t.Fatalf("replica %d serves a refused token", i)
				}
			}
			if rec := c.stored("cred"); rec.State != broker.StateActive || rec.Token.AccessToken != tok.AccessToken {
				t.Fatalf("after the outage: state %v, serving the stored token %v", rec.State, rec.Token.AccessToken == tok.AccessToken)
			}
			if st := c.idp.Stats(); st.RefreshRequests != 1 || st.Reuses != 0 {
				t.Fatalf("IdP saw %d refresh requests and %d spent-token presentations; want 1 and 0", st.RefreshRequests, st.Reuses)
			}
		})
	}
}

// A reply lost after the IdP rotated: within a reuse grace of 3 s the
// replay is answered (Dex); with none the credential says
// REFRESH_OUTCOME_UNKNOWN after exactly one request.
func TestLostReplyWithAndWithoutGrace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		grace time.Duration
		want  error
	}{
		{"grace 3s", 3 * time.Second, nil},
		{"grace 0", 0, broker.ErrOutcomeUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := noLossCluster(t, fakeidp.Options{OnReuse: fakeidp.DexReuseInterval, GraceWindow: 3 * time.Second})
			b := c.replica(nil)
			seed := c.idp.Seed(clientID)
			if _, err := b.PutCredential(c.admin, broker.Credential{ID: "cred", TokenURL: c.idp.TokenURL(),
				ClientID: clientID, ClientSecrets: []string{secret}, ReuseGrace: tc.grace}, seed); err != nil {
				t.Fatal(err)
			}
			c.idp.LoseReplyNext(1)
			tok, err := b.GetToken(context.Background(), "cred", 0)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("GetToken: %v; want %v", err, tc.want)
			}
			fam, _ := c.idp.FamilyStats(seed)
			if tc.want == nil {
				if !c.accepted(tok.AccessToken) || fam.GraceReplays != 1 || fam.RejectedReuses != 0 {
					t.Fatalf("grace: %d replays, %d rejected reuses; want 1 replay and a valid token", fam.GraceReplays, fam.RejectedReuses)
				}
				return
			}
			if rec := c.stored("cred"); !rec.OutcomeUnknown || rec.State != broker.StateReauthRequired {
				t.Fatalf("grace 0: state %v, outcome unknown %v", rec.State, rec.OutcomeUnknown)
			}
			if n := fam.SpentPresentations(); n != 0 || c.idp.Stats().RefreshRequests != 1 {
				t.Fatalf("grace 0: %d spent-token presentations, %d requests; want 0 and 1", n, c.idp.Stats().RefreshRequests)
			}
		})
	}
}

// An IdP that holds a refresh longer than --refresh-timeout and then
// processes it (as Dex does when it wakes): callers are told it is
// unavailable, the broker keeps reading, stores the late answer, and the
// next refresh does not present the token the IdP rotated meanwhile.
func TestIdPStallLongerThanTheRefreshTimeout(t *testing.T) {
	t.Parallel()
	c := noLossCluster(t, fakeidp.Options{})
	b := c.replica(nil)
	c.credential(b, "cred")
	seed := c.stored("cred").RefreshToken
	c.idp.StallNext(1)
	start := time.Now()
	if _, err := b.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrIdPUnavailable) {
		t.Fatalf("GetToken while the IdP stalls: %v; want ErrIdPUnavailable (IdP: %+v)", err, c.idp.StallState())
	}
	t.Logf("the caller was answered after %v (refresh timeout %v)", time.Since(start).Round(time.Millisecond), c.cfg.RefreshTimeout)
	c.idp.Resume() // the IdP wakes and rotates
	eventually(t, "the late answer to be stored", func() bool { return c.stored("cred").RefreshToken != seed })
	tok, err := b.GetToken(context.Background(), "cred", 0)
	if err != nil || !c.accepted(tok.AccessToken) {
		t.Fatalf("after the late answer: %v", err)
	}
	if _, err := b.RefreshCredential(c.admin, "cred"); err != nil {
		t.Fatalf("the next refresh: %v", err)
	}
	if st := c.idp.Stats(); st.Reuses != 0 || st.Refreshes != 2 {
		t.Fatalf("%d refreshes, %d spent-token presentations; want 2, 0", st.Refreshes, st.Reuses)
	}
}

// slowHook delays every command of a go-redis client while on, as a replica
// whose network to Redis went slow would see.
type slowHook struct {
	on    atomic.Bool
	delay time.Duration
}

func (h *slowHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *slowHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.wait(ctx)
		return next(ctx, cmd)
	}
}

func (h *slowHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.wait(ctx)
		return next(ctx, cmds)
	}
}

func (h *slowHook) wait(ctx context.Context) {
	if !h.on.Load() {
		return
	}
	t := time.NewTimer(h.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

var _ redis.Hook = (*slowHook)(nil)

// A holder whose Redis replies are slowed by 1.8 s right after the IdP
// answered loses its lease before its outcome is stored; the fast replica
// that takes the lease sees the pending refresh and does not present the
// spent token. The slow holder's outcome lands, and both serve it.
func TestSlowHolderAndFastReplica(t *testing.T) {
	t.Parallel()
	hook := &slowHook{delay: 1800 * time.Millisecond}
	slowDown := func() { hook.on.Store(true) }
	c := noLossCluster(t, fakeidp.Options{OnEvent: afterRotation(&slowDown)})
	c.cfg.LockTTL = 1500 * time.Millisecond
	fast := c.replica(nil)
	slow, client := c.replicaOn(func(s broker.Store) broker.Store { return s }, nil)
	client.AddHook(hook)
	c.credential(fast, "cred")
	seed := c.stored("cred").RefreshToken

	slowDone := make(chan error, 1)
	go func() {
		_, err := slow.RefreshCredential(c.admin, "cred")
		slowDone <- err
	}()
	eventually(t, "the IdP to answer the slow holder", func() bool { return c.idp.Stats().Refreshes == 1 })
	time.Sleep(2 * c.cfg.LockTTL) // the slow holder's lease runs out while its writes crawl

	var fastErr error
	for range 5 {
		_, fastErr = fast.RefreshCredential(c.admin, "cred")
		if fastErr == nil {
			break
		}
		if !retryable(fastErr) && !errors.Is(fastErr, broker.ErrRateLimited) {
			t.Fatalf("fast replica: %v; want a retryable error while the refresh is pending", fastErr)
		}
	}
	if st := c.idp.Stats(); st.Reuses != 0 {
		t.Fatalf("the fast replica presented the spent refresh token (%d reuses)", st.Reuses)
	}
	<-slowDone
	hook.on.Store(false)
	eventually(t, "the slow holder's outcome to be stored", func() bool { return c.stored("cred").RefreshToken != seed })
	tok, err := fast.GetToken(context.Background(), "cred", 0)
	if err != nil || !c.accepted(tok.AccessToken) {
		t.Fatalf("fast replica after the outcome was stored: %v", err)
	}
	if st := c.idp.Stats(); st.Reuses != 0 || st.Revocations != 0 {
		t.Fatalf("%d spent-token presentations, %d revocations; want 0", st.Reuses, st.Revocations)
	}
	if strings.Contains(c.stored("cred").LastError, "outcome unknown") {
		t.Fatal("the credential went to REFRESH_OUTCOME_UNKNOWN")
	}
}
