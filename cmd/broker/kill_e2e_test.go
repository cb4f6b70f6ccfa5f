package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// TestBinaryReplicaKilledMidRefresh runs three broker processes on one Redis,
// kills the one whose refresh is waiting on the IdP with SIGKILL, and checks
// that the survivors take over once its lease runs out, that no refresh
// token is presented twice, and that nothing stored is lost: a replacement
// process serves the same credential.
func TestBinaryReplicaKilledMidRefresh(t *testing.T) {
	t.Parallel()
	brokerBinary(t)
	rs := redistest.Start(t, redistest.WithAppendOnly())
	// The IdP behind a front that tells when a token request arrived.
	idp := fakeidp.New(fakeidp.Options{Clients: map[string]string{e2eClientID: e2eClientSecret}})
	arrived := make(chan struct{}, 1)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == fakeidp.TokenPath {
			select {
			case arrived <- struct{}{}:
			default:
			}
		}
		idp.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(func() { _ = idp.Close() }) // first: ends the held request
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "shared", "token_url": %q, "client_id": %q, "client_secret": %q, "refresh_token": %q}]}`,
		front.URL+fakeidp.TokenPath, e2eClientID, e2eClientSecret, idp.Seed(e2eClientID)))
	args := []string{"--grpc-addr", "127.0.0.1:0", "--redis-url", rs.URL(), "--redis-prefix", "kill",
		"--allow-plaintext", "--allow-unauthenticated", "--credentials-file", creds,
		"--refresh-timeout", "2s", "--lock-ttl", "3s", "--lock-wait", "10s"}

	var replicas []*proc
	var clients []pb.TokenServiceClient
	for range 3 {
		p := startBroker(t, args, nil)
		replicas = append(replicas, p)
		clients = append(clients, pb.NewTokenServiceClient(dial(t, p.waitLog(t, "listening", "addr"))))
	}

	// Replica 0 starts the refresh; the IdP holds it.
	idp.SetLatency(time.Minute)
	go func() { _, _ = clients[0].GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"}) }()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("replica 0 never called the IdP")
	}
	if err := syscall.Kill(replicas[0].cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	replicas[0].wait(t)
	idp.SetLatency(0)

	// The survivors, many callers each, get one token once the lease expires.
	var wg sync.WaitGroup
	tokens := make(chan string, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := clients[1+i%2].GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"})
			if err != nil {
				t.Errorf("survivor %d: %v", 1+i%2, err)
				return
			}
			tokens <- tok.GetAccessToken()
		}()
	}
	wg.Wait()
	close(tokens)
	distinct := map[string]bool{}
	for tok := range tokens {
		distinct[tok] = true
	}
	if len(distinct) != 1 {
		t.Fatalf("survivors served %d distinct tokens; want 1", len(distinct))
	}
	if st := idp.Stats(); st.Reuses != 0 || st.Refreshes != 1 || st.Revocations != 0 {
		t.Fatalf("IdP: %d refreshes, %d reuses, %d revocations; want 1, 0, 0", st.Refreshes, st.Reuses, st.Revocations)
	}
	var tok string
	for t := range distinct {
		tok = t
	}
	req, _ := http.NewRequest(http.MethodGet, front.URL+fakeidp.ResourcePath, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the resource refused the survivors' token: %d", resp.StatusCode)
	}

	// A replacement for the killed replica serves the stored token.
	p := startBroker(t, args, nil)
	again, err := pb.NewTokenServiceClient(dial(t, p.waitLog(t, "listening", "addr"))).
		GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "shared"})
	if err != nil || again.GetAccessToken() != tok {
		t.Fatalf("the replacement replica: %v (same token: %v)", err, again.GetAccessToken() == tok)
	}
}
