package metrics_test

import (
	"context"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

const (
	idpClientID = "metrics-test-client"
	idpSecret   = "CLIENT-SECRET-7f3a9c"
)

// env is a real Broker over a memstore and a fake IdP, with distinctive
// secrets to search for.
type env struct {
	b     *broker.Broker
	idp   *fakeidp.Server
	store *memstore.Store
	// secrets collects every secret the run handled: client secret,
	// refresh tokens, access tokens.
	secrets []string
}

func newEnv(t *testing.T, obs broker.Observer) *env {
	t.Helper()
	e := &env{
		idp:     fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{idpClientID: idpSecret}}),
		store:   memstore.New(),
		secrets: []string{idpSecret},
	}
	b, err := broker.New(e.store, &upstream.Client{}, broker.Config{
		Observer:       obs,
		RefreshTimeout: 2 * time.Second,
		ForceInterval:  time.Nanosecond,
		BackoffMin:     time.Millisecond,
		BackoffMax:     time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	e.b = b
	return e
}

var (
	admin  = broker.Caller{ID: "ops", Admin: true}
	worker = broker.Caller{ID: "worker-a"}
)

func as(c broker.Caller) context.Context { return broker.NewContext(context.Background(), c) }

// put creates credential id seeded with a new token family (or with
// refreshToken when not empty, e.g. a dead one).
func (e *env) put(t *testing.T, id, refreshToken string) {
	t.Helper()
	if refreshToken == "" {
		refreshToken = e.idp.Seed(idpClientID)
	}
	e.secrets = append(e.secrets, refreshToken)
	_, err := e.b.PutCredential(as(admin), broker.Credential{
		ID: id, TokenURL: e.idp.TokenURL(), ClientID: idpClientID, ClientSecrets: []string{idpSecret},
		AllowedClients: []string{worker.ID},
	}, refreshToken)
	if err != nil {
		t.Fatal(err)
	}
}

// token gets a token of id as the worker and remembers it as a secret.
func (e *env) token(t *testing.T, id string) broker.Token {
	t.Helper()
	tok, err := e.b.GetToken(as(worker), id, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = append(e.secrets, tok.AccessToken)
	return tok
}

// keepStoredSecrets remembers the refresh token and access token stored for
// id now.
func (e *env) keepStoredSecrets(t *testing.T, id string) {
	t.Helper()
	rec, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{rec.RefreshToken, rec.Token.AccessToken} {
		if s != "" {
			e.secrets = append(e.secrets, s)
		}
	}
}
