package broker_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

func TestConcurrentGetTokenOnExpiredTokenRefreshesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Second, Latency: 50 * time.Millisecond})
		b := e.broker(nil)
		e.credential(b, "cred")
		ctx := context.Background()

		first, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		waitExpired(first)
		e.idp.ResetStats()

		const callers = 200
		tokens := make([]broker.Token, callers)
		errs := make([]error, callers)
		var start, done sync.WaitGroup
		start.Add(1)
		for i := range callers {
			done.Add(1)
			go func() {
				defer done.Done()
				start.Wait()
				tokens[i], errs[i] = b.GetToken(ctx, "cred", 0)
			}()
		}
		start.Done()
		done.Wait()

		for i, err := range errs {
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
			if tokens[i].AccessToken != tokens[0].AccessToken {
				t.Fatalf("caller %d got another token than caller 0", i)
			}
		}
		if tokens[0].AccessToken == first.AccessToken {
			t.Fatal("got the expired token back")
		}
		if st := e.idp.Stats(); st.RefreshRequests != 1 || st.Refreshes != 1 || st.Reuses != 0 {
			t.Fatalf("IdP saw %d refresh requests, %d refreshes, %d reuses; want 1, 1, 0", st.RefreshRequests, st.Refreshes, st.Reuses)
		}
		if !e.accepted(tokens[0].AccessToken) {
			t.Fatal("the resource server refused the new token")
		}
	})
}

// Two Brokers sharing one Store behave as two replicas: concurrent callers on
// both still cause one refresh.
func TestConcurrentGetTokenAcrossBrokersRefreshesOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Second, Latency: 50 * time.Millisecond})
		replicas := []*broker.Broker{e.broker(nil), e.broker(nil), e.broker(nil)}
		e.credential(replicas[0], "cred")
		ctx := context.Background()

		for round := range 3 {
			e.idp.ResetStats()
			var wg sync.WaitGroup
			tokens := make(chan string, 300)
			for i := range 300 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tok, err := replicas[i%3].GetToken(ctx, "cred", 0)
					if err != nil {
						t.Errorf("round %d: %v", round, err)
						return
					}
					tokens <- tok.AccessToken
				}()
			}
			wg.Wait()
			close(tokens)
			seen := map[string]bool{}
			for tok := range tokens {
				seen[tok] = true
			}
			if st := e.idp.Stats(); st.Refreshes != 1 || st.Reuses != 0 || len(seen) != 1 {
				t.Fatalf("round %d: %d refreshes, %d reuses, %d distinct tokens; want 1, 0, 1", round, st.Refreshes, st.Reuses, len(seen))
			}
			time.Sleep(1100 * time.Millisecond) // let the token expire for the next round
		}
	})
}

func TestInvalidateTokenRefreshesOnlyTheCurrentToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{Latency: 30 * time.Millisecond})
		b := e.broker(nil)
		e.credential(b, "cred")
		ctx := context.Background()
		old, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		e.idp.ResetStats()

		var wg sync.WaitGroup
		got := make([]broker.Token, 50)
		for i := range got {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tok, err := b.InvalidateToken(ctx, "cred", old.AccessToken, 0)
				if err != nil {
					t.Error(err)
				}
				got[i] = tok
			}()
		}
		wg.Wait()
		if st := e.idp.Stats(); st.Refreshes != 1 {
			t.Fatalf("50 invalidations of one token caused %d refreshes; want 1", st.Refreshes)
		}
		for i, tok := range got {
			if tok.AccessToken == old.AccessToken || tok.AccessToken != got[0].AccessToken {
				t.Fatalf("caller %d did not get the one new token", i)
			}
		}

		// The rejected token is no longer current: no refresh, the current one back.
		tok, err := b.InvalidateToken(ctx, "cred", old.AccessToken, 0)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken != got[0].AccessToken {
			t.Fatal("a stale invalidation did not return the current token")
		}
		if st := e.idp.Stats(); st.RefreshRequests != 1 {
			t.Fatalf("a stale invalidation caused a refresh (%d requests)", st.RefreshRequests)
		}
	})
}

func TestForcedRefreshesAreRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{})
		e.cfg.ForceInterval = time.Hour
		b := e.broker(nil)
		e.credential(b, "cred")
		ctx := context.Background()

		tok, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		tok2, err := b.InvalidateToken(ctx, "cred", tok.AccessToken, 0)
		if err != nil {
			t.Fatalf("first forced refresh: %v", err)
		}
		// Within the interval an invalidation answers with the current
		// token, the rejected one: nothing newer exists.
		same, err := b.InvalidateToken(ctx, "cred", tok2.AccessToken, 0)
		if err != nil || same.AccessToken != tok2.AccessToken {
			t.Fatalf("second forced refresh within the interval: %v; want the current token back", err)
		}
		time.Sleep(time.Millisecond) // a refresh that finished before the call began does not count
		if _, err := b.RefreshCredential(ctx, "cred"); !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("RefreshCredential within the interval: %v; want ErrRateLimited", err)
		}
		if st := e.idp.Stats(); st.RefreshRequests != 2 {
			t.Fatalf("IdP saw %d refresh requests; want 2", st.RefreshRequests)
		}
	})
}

// spend presents rt to the IdP outside the broker, as a rogue worker would.
func spend(t *testing.T, e *env, rt string) {
	t.Helper()
	conf := oauth2.Config{ClientID: testClientID, ClientSecret: testSecret,
		Endpoint: oauth2.Endpoint{TokenURL: e.tokenURL, AuthStyle: oauth2.AuthStyleInHeader}}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, e.http)
	if _, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token(); err != nil {
		t.Fatal(err)
	}
}

func TestDeadGrantMovesToReauthRequired(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy fakeidp.ReusePolicy
		code   string
	}{
		{"invalid_grant after family revocation", fakeidp.RevokeFamily, "invalid_grant"},
		{"Dex invalid_request", fakeidp.DexInvalidRequest, "invalid_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{OnReuse: tc.policy})
				b := e.broker(nil)
				e.credential(b, "cred")
				ctx := context.Background()
				spend(t, e, e.stored("cred").RefreshToken) // the stored token is now spent

				_, err := b.GetToken(ctx, "cred", 0)
				if !errors.Is(err, broker.ErrReauthRequired) {
					t.Fatalf("GetToken: %v; want ErrReauthRequired", err)
				}
				rec, err := b.GetCredential(ctx, "cred")
				if err != nil {
					t.Fatal(err)
				}
				if rec.State != broker.StateReauthRequired || !strings.Contains(rec.LastError, tc.code) || rec.LastErrorAt.IsZero() {
					t.Fatalf("state %v, last error %q; want REAUTH_REQUIRED with %s", rec.State, rec.LastError, tc.code)
				}
				before := e.idp.Stats().RefreshRequests
				for range 5 {
					if _, err := b.GetToken(ctx, "cred", 0); !errors.Is(err, broker.ErrReauthRequired) {
						t.Fatalf("GetToken: %v; want ErrReauthRequired", err)
					}
					if _, err := b.InvalidateToken(ctx, "cred", "whatever", 0); !errors.Is(err, broker.ErrReauthRequired) {
						t.Fatalf("InvalidateToken: %v; want ErrReauthRequired", err)
					}
				}
				if _, err := b.RefreshCredential(ctx, "cred"); !errors.Is(err, broker.ErrReauthRequired) {
					t.Fatalf("RefreshCredential: %v; want ErrReauthRequired", err)
				}
				if after := e.idp.Stats().RefreshRequests; after != before {
					t.Fatalf("%d IdP calls after REAUTH_REQUIRED; want none", after-before)
				}

				// An operator puts a new refresh token in: served again.
				if _, err := b.PutCredential(ctx, broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID},
					e.idp.Seed(testClientID)); err != nil {
					t.Fatal(err)
				}
				tok, err := b.GetToken(ctx, "cred", 0)
				if err != nil {
					t.Fatalf("after re-seeding: %v", err)
				}
				if !e.accepted(tok.AccessToken) {
					t.Fatal("token refused after re-seeding")
				}
				if rec := e.stored("cred"); rec.State != broker.StateActive || rec.LastError != "" {
					t.Fatalf("after re-seeding: state %v, last error %q", rec.State, rec.LastError)
				}
			})
		})
	}
}

func TestTransientFailuresKeepTheRefreshToken(t *testing.T) {
	for _, tc := range []struct {
		name       string
		inject     func(*fakeidp.Server)
		retryAtLst time.Duration
	}{
		{"503", func(s *fakeidp.Server) { s.FailNext(1, http.StatusServiceUnavailable) }, 0},
		{"500", func(s *fakeidp.Server) { s.FailNext(1, http.StatusInternalServerError) }, 0},
		{"429 with Retry-After", func(s *fakeidp.Server) { s.RateLimitNext(1, time.Second) }, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{})
				e.cfg.RefreshTimeout = 200 * time.Millisecond
				b := e.broker(nil)
				e.credential(b, "cred")
				ctx := context.Background()
				seed := e.stored("cred").RefreshToken
				tc.inject(e.idp)

				_, err := b.GetToken(ctx, "cred", 0)
				var be *broker.Error
				if !errors.Is(err, broker.ErrIdPUnavailable) || !errors.As(err, &be) || be.RetryAfter < tc.retryAtLst || be.RetryAfter <= 0 {
					t.Fatalf("GetToken: %v; want ErrIdPUnavailable with RetryAfter >= %v", err, tc.retryAtLst)
				}
				rec := e.stored("cred")
				if rec.State != broker.StateActive || rec.RefreshToken != seed || rec.LastError == "" || rec.NextAttemptAt.IsZero() {
					t.Fatalf("after a transient failure: state %v, refresh token kept %v, last error %q, next attempt %v",
						rec.State, rec.RefreshToken == seed, rec.LastError, rec.NextAttemptAt)
				}
				// During the backoff, callers are answered without calling the IdP.
				n := e.idp.Stats().RefreshRequests
				if _, err := b.GetToken(ctx, "cred", 0); !errors.Is(err, broker.ErrIdPUnavailable) {
					t.Fatalf("during backoff: %v", err)
				}
				if e.idp.Stats().RefreshRequests != n {
					t.Fatal("the IdP was called during the backoff")
				}

				e.idp.SetLatency(0)
				time.Sleep(time.Until(rec.NextAttemptAt))
				tok, err := b.GetToken(ctx, "cred", 0)
				if err != nil {
					t.Fatalf("after the backoff: %v", err)
				}
				if st := e.idp.Stats(); st.Reuses != 0 || st.Refreshes != 1 || !e.accepted(tok.AccessToken) {
					t.Fatalf("after the backoff: %d reuses, %d refreshes; want 0, 1 and a valid token", st.Reuses, st.Refreshes)
				}
			})
		})
	}
}

func TestCallerThatGoesAwayDoesNotLoseTheRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{Latency: 300 * time.Millisecond})
		b := e.broker(nil)
		e.credential(b, "cred")
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := b.GetToken(ctx, "cred", 0); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("GetToken: %v; want the caller's deadline", err)
		}
		time.Sleep(time.Second) // the refresh runs on after its caller left (300 ms at the IdP)
		synctest.Wait()
		rec := e.stored("cred")
		tok, err := b.GetToken(context.Background(), "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		if tok.AccessToken != rec.Token.AccessToken {
			t.Fatal("the stored refresh result was not served")
		}
		if st := e.idp.Stats(); st.Refreshes != 1 || st.Reuses != 0 {
			t.Fatalf("%d refreshes, %d reuses; want 1, 0", st.Refreshes, st.Reuses)
		}
	})
}

func TestRefreshAheadKeepsCallersFromWaiting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: time.Second, Latency: 20 * time.Millisecond})
		obs := &observer{}
		b := e.broker(obs)
		e.credential(b, "cred")
		ctx := context.Background()
		if _, err := b.GetToken(ctx, "cred", 0); err != nil { // the first caller waits
			t.Fatal(err)
		}
		obs.served[broker.FromRefresh].Store(0)

		var wg sync.WaitGroup
		stop := time.Now().Add(3500 * time.Millisecond) // several 1 s lifetimes
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 2000 && time.Now().Before(stop); i++ {
					tok, err := b.GetToken(ctx, "cred", 0)
					if err != nil {
						t.Error(err)
						return
					}
					// The default min_valid of a 1 s token is a quarter of it.
					if left := time.Until(tok.Expiry); left < 250*time.Millisecond {
						t.Errorf("served a token with %v left; want at least the default min_valid, 250ms", left)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		st := e.idp.Stats()
		if st.Refreshes < 4 || st.Reuses != 0 {
			t.Fatalf("%d refreshes, %d reuses over 3.5 lifetimes; want >= 4 and 0", st.Refreshes, st.Reuses)
		}
		if n := obs.served[broker.FromRefresh].Load(); n != 0 {
			t.Fatalf("%d calls waited for the IdP; want 0 with refresh-ahead", n)
		}
		if obs.served[broker.FromCache].Load() == 0 {
			t.Fatal("no call was served from the cache")
		}
	})
}

func TestRefreshWithoutRefreshTokenKeepsTheOldOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{Rotation: fakeidp.OmitRefreshToken})
		e.cfg.ForceInterval = time.Millisecond
		b := e.broker(nil)
		e.credential(b, "cred")
		seed := e.stored("cred").RefreshToken
		ctx := context.Background()
		for range 3 {
			if _, err := b.RefreshCredential(ctx, "cred"); err != nil {
				t.Fatal(err)
			}
			tok, err := b.GetToken(ctx, "cred", 0)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
			if _, err := b.InvalidateToken(ctx, "cred", tok.AccessToken, 0); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if rec := e.stored("cred"); rec.RefreshToken != seed {
			t.Fatal("the refresh token changed although the IdP sent none")
		}
		if st := e.idp.Stats(); st.Refreshes != 6 || st.RefreshRequests != st.Refreshes {
			t.Fatalf("%d refreshes of %d requests", st.Refreshes, st.RefreshRequests)
		}
	})
}

// A reply lost after the IdP rotated the token. Within the credential's
// reuse grace the broker replays the refresh token at once and the IdP
// answers it; with no grace (a strict IdP) it cannot know the successor and
// says so, REFRESH_OUTCOME_UNKNOWN, without presenting the spent token.
func TestLostReplyAfterRotation(t *testing.T) {
	for _, tc := range []struct {
		name     string
		policy   fakeidp.ReusePolicy
		grace    time.Duration
		want     error
		requests int64 // refresh requests the IdP saw
	}{
		{"grace 3s, Dex answers the replay with the same successor", fakeidp.DexReuseInterval, 3 * time.Second, nil, 2},
		{"grace 3s, Okta answers the replay with a new pair", fakeidp.GraceNewPair, 3 * time.Second, nil, 2},
		{"grace 0, strict IdP", fakeidp.RevokeFamily, 0, broker.ErrOutcomeUnknown, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, fakeidp.Options{OnReuse: tc.policy, GraceWindow: 3 * time.Second})
				b := e.broker(nil)
				if _, err := b.PutCredential(context.Background(), broker.Credential{
					ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{testSecret},
					ReuseGrace: tc.grace,
				}, e.idp.Seed(testClientID)); err != nil {
					t.Fatal(err)
				}
				e.idp.LoseReplyNext(1)
				tok, err := b.GetToken(context.Background(), "cred", 0)
				if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
					t.Fatalf("GetToken: %v; want %v", err, tc.want)
				}
				st := e.idp.Stats()
				if st.RefreshRequests != tc.requests || st.Revocations != 0 {
					t.Fatalf("IdP saw %d refresh requests and %d revocations; want %d and 0", st.RefreshRequests, st.Revocations, tc.requests)
				}
				rec := e.stored("cred")
				if tc.want == nil {
					if !e.accepted(tok.AccessToken) || rec.State != broker.StateActive || rec.Pending != nil {
						t.Fatalf("after the replay: state %v, pending %v, token accepted %v", rec.State, rec.Pending, e.accepted(tok.AccessToken))
					}
					return
				}
				if !errors.Is(err, broker.ErrReauthRequired) || rec.State != broker.StateReauthRequired || !rec.OutcomeUnknown ||
					!strings.Contains(rec.LastError, "outcome unknown") {
					t.Fatalf("state %v, outcome unknown %v, last error %q; want REAUTH_REQUIRED, outcome unknown", rec.State, rec.OutcomeUnknown, rec.LastError)
				}
				if _, err := b.GetToken(context.Background(), "cred", 0); !errors.Is(err, broker.ErrOutcomeUnknown) {
					t.Fatalf("GetToken again: %v; want ErrOutcomeUnknown", err)
				}
				if n := e.idp.Stats().RefreshRequests; n != 1 {
					t.Fatalf("the spent refresh token was presented again (%d requests)", n)
				}
			})
		})
	}
}

func TestMinValid(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, fakeidp.Options{AccessTokenTTL: 4 * time.Second})
		e.cfg.DefaultMinValid = time.Minute
		b := e.broker(nil)
		e.credential(b, "cred")
		ctx := context.Background()
		// The default is capped at a quarter of the lifetime, so it is served.
		tok, err := b.GetToken(ctx, "cred", 0)
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(tok.Expiry); left < time.Second {
			t.Fatalf("token valid for %v; want >= 1s", left)
		}
		if _, err := b.GetToken(ctx, "cred", time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetToken(ctx, "cred", 3*time.Second); !errors.Is(err, broker.ErrMinValidTooLong) {
			t.Fatalf("min_valid beyond half the lifetime: %v; want ErrMinValidTooLong", err)
		}
		if st := e.idp.Stats(); st.RefreshRequests != 1 {
			t.Fatalf("%d refresh requests; want 1", st.RefreshRequests)
		}
		// The cached token, with 1.5 s left, does not do for a caller that
		// needs 2 s: that caller gets a fresh one.
		time.Sleep(time.Until(tok.Expiry) - 1500*time.Millisecond)
		fresh, err := b.GetToken(ctx, "cred", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if left := time.Until(fresh.Expiry); left < 2*time.Second || fresh.AccessToken == tok.AccessToken {
			t.Fatalf("min_valid 2s: got a token with %v left (the cached one: %v)", left, fresh.AccessToken == tok.AccessToken)
		}
	})
}
