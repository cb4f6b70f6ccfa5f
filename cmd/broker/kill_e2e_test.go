package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// killRig is three broker processes on one Redis and a strict IdP (a spent
// refresh token presented again revokes the family), with short timings: a
// holder's lease lasts 3 s, and a refresh it announced is waited for 2 s
// (--refresh-reply-wait) plus the lease before a survivor takes it over.
type killRig struct {
	t        *testing.T
	rs       *redistest.Server
	idp      *fakeidp.Server
	args     []string
	replicas []*proc
	clients  []pb.TokenServiceClient
	admin    []pb.AdminServiceClient
}

func newKillRig(t *testing.T, idpOpts fakeidp.Options, extra ...string) *killRig {
	t.Helper()
	brokerBinary(t)
	idpOpts.Clients = map[string]string{e2eClientID: e2eClientSecret}
	r := &killRig{t: t, rs: redistest.Start(t, redistest.WithAppendOnly()), idp: fakeidptest.Start(t, idpOpts)}
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "shared", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		r.idp.TokenURL(), e2eClientID, e2eClientSecret, r.idp.Seed(e2eClientID)))
	r.args = append([]string{"--grpc-addr", "127.0.0.1:0", "--redis-url", r.rs.URL(), "--redis-prefix", "kill",
		"--seal-keys", "k1:" + testSealKey, "--allow-unauthenticated", "--credentials-file", creds,
		"--refresh-timeout", "2s", "--refresh-reply-wait", "2s", "--lock-ttl", "3s", "--lock-wait", "10s"}, extra...)
	for range 3 {
		r.start()
	}
	return r
}

// start starts one more replica.
func (r *killRig) start() int {
	p := startBroker(r.t, r.args, nil)
	conn := dial(r.t, p.waitLog(r.t, "listening", "addr"))
	r.replicas = append(r.replicas, p)
	r.clients = append(r.clients, pb.NewTokenServiceClient(conn))
	r.admin = append(r.admin, pb.NewAdminServiceClient(conn))
	return len(r.replicas) - 1
}

func (r *killRig) kill(i int) {
	r.t.Helper()
	if err := syscall.Kill(r.replicas[i].cmd.Process.Pid, syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
	r.replicas[i].wait(r.t)
}

// survivorsGet has many callers on the given replicas each ask for the
// token, retrying UNAVAILABLE as the SDK would, until they get an answer
// that is not UNAVAILABLE; it returns the distinct tokens and the last
// non-retryable status (nil if every caller got a token).
func (r *killRig) survivorsGet(replicas ...int) (map[string]bool, *status.Status) {
	r.t.Helper()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		distinct = map[string]bool{}
		final    *status.Status
	)
	deadline := time.Now().Add(30 * time.Second)
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := r.clients[replicas[i%len(replicas)]]
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				tok, err := c.GetToken(ctx, &pb.GetTokenRequest{CredentialId: "shared"})
				cancel()
				st := status.Convert(err)
				if st.Code() == codes.Unavailable {
					select {
					case <-time.After(200 * time.Millisecond): // the broker's RetryInfo asks for about this
					case <-r.t.Context().Done():
						return
					}
					continue
				}
				mu.Lock()
				if err == nil {
					distinct[tok.GetAccessToken()] = true
				} else {
					final = st
				}
				mu.Unlock()
				return
			}
			r.t.Errorf("replica %d stayed UNAVAILABLE for 30 s", replicas[i%len(replicas)])
		}()
	}
	wg.Wait()
	return distinct, final
}

// The holder is killed while the IdP still holds its request, and the IdP
// never acts on it (it fails before the grant is looked at): once the pending
// refresh's bound has passed, a survivor presents the refresh token, which
// is still unspent, and every caller gets the one new token.
func TestBinaryReplicaKilledBeforeTheIdPActed(t *testing.T) {
	t.Parallel()
	r := newKillRig(t, fakeidp.Options{})
	r.idp.StallNext(1)
	go func() { _, _ = r.clients[0].GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"}) }()
	if err := r.idp.WaitStall(ctxFor(t), func(s fakeidp.StallState) bool { return s.Held == 1 }); err != nil {
		t.Fatalf("replica 0 never reached the IdP: %v", err)
	}
	r.kill(0)
	r.idp.FailNext(1, http.StatusServiceUnavailable) // the held request fails before it is looked at
	r.idp.Resume()

	distinct, final := r.survivorsGet(1, 2)
	if final != nil || len(distinct) != 1 {
		t.Fatalf("survivors: %d distinct tokens, last error %v; want 1 token, no error", len(distinct), final)
	}
	if st := r.idp.Stats(); st.Refreshes != 1 || st.Reuses != 0 || st.Revocations != 0 {
		t.Fatalf("IdP: %d refreshes, %d reuses, %d revocations; want 1, 0, 0", st.Refreshes, st.Reuses, st.Revocations)
	}
	var tok string
	for tok = range distinct {
	}
	if info, ok := r.idp.Lookup(tok); !ok || !info.Live {
		t.Fatal("the survivors' token is not valid at the IdP")
	}
	// A replacement for the killed replica serves the stored token.
	i := r.start()
	again, err := r.clients[i].GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"})
	if err != nil || again.GetAccessToken() != tok {
		t.Fatalf("the replacement replica: %v (same token: %v)", err, again.GetAccessToken() == tok)
	}
}

// The holder is killed after the IdP rotated the refresh token and answered,
// while Redis did not answer it (SIGSTOPped from the IdP's answer on). With
// --journal-dir the restarted holder stores the successor it journaled:
// nothing is lost and no spent token is presented. Without it the
// successor is gone: a survivor presents the refresh token once, past the
// bound, and the credential says REFRESH_OUTCOME_UNKNOWN.
func TestBinaryReplicaKilledAfterTheIdPAnswered(t *testing.T) {
	for _, journaled := range []bool{true, false} {
		t.Run(fmt.Sprintf("journal=%v", journaled), func(t *testing.T) {
			t.Parallel()
			var rs *redistest.Server
			var once sync.Once
			idpOpts := fakeidp.Options{OnEvent: func(ev fakeidp.Event) {
				if ev.Path == fakeidp.TokenPath && ev.GrantType == "refresh_token" && ev.Status == http.StatusOK {
					once.Do(func() { rs.Pause() }) // before the answer reaches the broker
				}
			}}
			dir := t.TempDir()
			var extra []string
			if journaled {
				extra = []string{"--journal-dir", dir}
			}
			r := newKillRig(t, idpOpts, extra...)
			rs = r.rs
			go func() { _, _ = r.clients[0].GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"}) }()
			waitFor(t, "the IdP to answer the refresh", func() bool { return r.idp.Stats().Refreshes == 1 })
			if journaled {
				waitFor(t, "the successor to be journaled", func() bool {
					m, _ := filepath.Glob(filepath.Join(dir, "*.entry"))
					return len(m) == 1
				})
			}
			r.kill(0)
			r.rs.Resume()

			if journaled {
				// The restarted replica 0, on the same journal, stores it.
				i := r.start()
				distinct, final := r.survivorsGet(1, 2, i)
				if final != nil || len(distinct) != 1 {
					t.Fatalf("after the restart: %d distinct tokens, last error %v; want 1 token", len(distinct), final)
				}
				if st := r.idp.Stats(); st.Refreshes != 1 || st.Reuses != 0 {
					t.Fatalf("IdP: %d refreshes, %d reuses; want 1, 0", st.Refreshes, st.Reuses)
				}
				if m, _ := filepath.Glob(filepath.Join(dir, "*.entry")); len(m) != 0 {
					t.Fatalf("%d journal entries left after the successor was stored", len(m))
				}
				return
			}
			_, final := r.survivorsGet(1, 2)
			if final.Code() != codes.FailedPrecondition || reasonOf(final) != "REFRESH_OUTCOME_UNKNOWN" {
				t.Fatalf("survivors: %v; want FAILED_PRECONDITION, REFRESH_OUTCOME_UNKNOWN", final)
			}
			cred, err := r.admin[1].GetCredential(ctxFor(t), &pb.GetCredentialRequest{Id: "shared"})
			if err != nil {
				t.Fatal(err)
			}
			if c := cred.GetCredential(); c.GetState() != pb.State_REAUTH_REQUIRED || c.GetReauthReason() != "REFRESH_OUTCOME_UNKNOWN" {
				t.Fatalf("credential state %v, reauth reason %q", c.GetState(), c.GetReauthReason())
			}
			if st := r.idp.Stats(); st.Reuses != 1 {
				t.Fatalf("%d spent refresh tokens presented; want exactly the one unknown", st.Reuses)
			}
		})
	}
}

// waitFor polls cond, a state another process changes, for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// reasonOf returns the ErrorInfo reason of st, or "".
func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(interface{ GetReason() string }); ok {
			return info.GetReason()
		}
	}
	return ""
}
