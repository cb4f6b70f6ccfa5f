package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// logSink collects JSON log lines and reports the "listening" address.
type logSink struct {
	mu        sync.Mutex
	buf       strings.Builder
	listening chan string
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf.Write(p)
	var m struct{ Msg, Addr string }
	if json.Unmarshal(p, &m) == nil && m.Msg == "listening" {
		s.listening <- m.Addr
	}
	return len(p), nil
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// TestRealMain runs the broker in this process (so the race detector sees
// its wiring), seeds a credential from a file, serves a token, and returns
// nil once its context ends.
func TestRealMain(t *testing.T) {
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{"c": "SECRET-s"}})
	rt := idp.Seed("c")
	creds := writeFile(t, fmt.Sprintf(`{"credentials": [{"id": "one", "token_url": %q, "client_id": "c", "client_secret": "SECRET-s", "refresh_token": %q}]}`, idp.TokenURL(), rt))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := &logSink{listening: make(chan string, 1)}
	done := make(chan error, 1)
	go func() {
		done <- realMain(ctx, []string{"--grpc-addr", "127.0.0.1:0", "--log-format", "json", "--credentials-file", creds},
			env(map[string]string{"TOKENBROKER_LOG_LEVEL": "debug"}), &strings.Builder{}, sink)
	}()
	var addr string
	select {
	case addr = <-sink.listening:
	case err := <-done:
		t.Fatalf("realMain returned early: %v\n%s", err, sink)
	case <-time.After(30 * time.Second):
		t.Fatalf("not listening:\n%s", sink)
	}
	tok, err := pb.NewTokenServiceClient(dial(t, addr)).GetToken(ctxFor(t), &pb.GetTokenRequest{CredentialId: "one"})
	if err != nil || tok.GetAccessToken() == "" {
		t.Fatalf("GetToken = %v, %v", tok, err)
	}
	if info, ok := idp.Lookup(tok.GetAccessToken()); !ok || !info.Live {
		t.Errorf("token not live at the IdP: %+v", info)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("realMain = %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("realMain did not return after cancel")
	}
	out := sink.String()
	if strings.Contains(out, "SECRET") || strings.Contains(out, rt) || strings.Contains(out, tok.GetAccessToken()) {
		t.Errorf("log holds a secret:\n%s", out)
	}
	if !strings.Contains(out, `"msg":"credentials file loaded"`) || !strings.Contains(out, `"msg":"stopped"`) {
		t.Errorf("log lacks the start and stop lines:\n%s", out)
	}
}
