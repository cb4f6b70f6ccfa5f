package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

func TestAuthorization(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	e.cfg.Open = false
	b := e.broker(nil)
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	reader := broker.NewContext(context.Background(), broker.Caller{ID: "worker-a"})
	other := broker.NewContext(context.Background(), broker.Caller{ID: "worker-b"})
	anon := context.Background()

	if _, err := b.PutCredential(admin, broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID,
		ClientSecrets: []string{testSecret}, AllowedClients: []string{"worker-a"}}, e.idp.Seed(testClientID)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"reader gets its token", func() error { _, err := b.GetToken(reader, "cred", 0); return err }, nil},
		{"reader again, from the cache", func() error { _, err := b.GetToken(reader, "cred", 0); return err }, nil},
		{"another client", func() error { _, err := b.GetToken(other, "cred", 0); return err }, broker.ErrPermissionDenied},
		{"another client invalidating", func() error { _, err := b.InvalidateToken(other, "cred", "x", 0); return err }, broker.ErrPermissionDenied},
		{"anonymous", func() error { _, err := b.GetToken(anon, "cred", 0); return err }, broker.ErrPermissionDenied},
		{"admins do not read tokens", func() error { _, err := b.GetToken(admin, "cred", 0); return err }, broker.ErrPermissionDenied},
		{"a missing credential looks forbidden", func() error { _, err := b.GetToken(reader, "nope", 0); return err }, broker.ErrPermissionDenied},
		{"to an admin it is missing", func() error { _, err := b.GetCredential(admin, "nope"); return err }, broker.ErrNotFound},
		{"reader cannot put", func() error {
			_, err := b.PutCredential(reader, broker.Credential{ID: "x", TokenURL: e.tokenURL, ClientID: "c"}, "rt")
			return err
		}, broker.ErrPermissionDenied},
		{"reader cannot get", func() error { _, err := b.GetCredential(reader, "cred"); return err }, broker.ErrPermissionDenied},
		{"reader cannot list", func() error { _, _, err := b.ListCredentials(reader, 0, ""); return err }, broker.ErrPermissionDenied},
		{"reader cannot refresh", func() error { _, err := b.RefreshCredential(reader, "cred"); return err }, broker.ErrPermissionDenied},
		{"reader cannot delete", func() error { return b.DeleteCredential(reader, "cred") }, broker.ErrPermissionDenied},
		{"admin lists", func() error { _, _, err := b.ListCredentials(admin, 0, ""); return err }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("got %v; want %v", err, tc.want)
			}
		})
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	e.credential(b, "cred")
	ctx := context.Background()
	before := e.stored("cred")
	good := func() broker.Credential {
		return broker.Credential{ID: "cred", TokenURL: e.tokenURL, ClientID: testClientID, ClientSecrets: []string{"new-secret"}}
	}
	long := strings.Repeat("a", 20000)
	for _, tc := range []struct {
		name, field string
		call        func() error
	}{
		{"empty id", "credential_id", func() error { _, err := b.GetToken(ctx, "", 0); return err }},
		{"id with a space", "credential_id", func() error { _, err := b.GetToken(ctx, "a b", 0); return err }},
		{"id with braces", "credential_id", func() error { _, err := b.GetToken(ctx, "{cred}", 0); return err }},
		{"id starting with a dot", "credential_id", func() error { _, err := b.GetToken(ctx, ".cred", 0); return err }},
		{"overlong id", "credential_id", func() error { _, err := b.GetToken(ctx, strings.Repeat("a", 129), 0); return err }},
		{"negative min_valid", "min_valid", func() error { _, err := b.GetToken(ctx, "cred", -time.Second); return err }},
		{"absurd min_valid", "min_valid", func() error { _, err := b.GetToken(ctx, "cred", 25*time.Hour); return err }},
		{"empty rejected token", "rejected_access_token", func() error { _, err := b.InvalidateToken(ctx, "cred", "", 0); return err }},
		{"oversized rejected token", "rejected_access_token", func() error { _, err := b.InvalidateToken(ctx, "cred", long, 0); return err }},
		{"relative token URL", "credential.token_url", func() error {
			c := good()
			c.TokenURL = "/token"
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"ftp token URL", "credential.token_url", func() error {
			c := good()
			c.TokenURL = "ftp://idp.example/token"
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"token URL with user info", "credential.token_url", func() error {
			c := good()
			c.TokenURL = "https://user:pw@idp.example/token"
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"empty client id", "credential.client_id", func() error {
			c := good()
			c.ClientID = ""
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"scope with a space", "credential.scopes", func() error {
			c := good()
			c.Scopes = []string{"a b"}
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"negative refresh_ahead", "credential.refresh_ahead", func() error {
			c := good()
			c.RefreshAhead = -time.Second
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"oversized refresh token", "credential.refresh_token", func() error { _, err := b.PutCredential(ctx, good(), long); return err }},
		{"refresh token with a newline", "credential.refresh_token", func() error { _, err := b.PutCredential(ctx, good(), "a\nb"); return err }},
		{"new credential without refresh token", "credential.refresh_token", func() error {
			c := good()
			c.ID = "new"
			_, err := b.PutCredential(ctx, c, "")
			return err
		}},
		{"page size", "page_size", func() error { _, _, err := b.ListCredentials(ctx, 5000, ""); return err }},
		{"page token", "page_token", func() error { _, _, err := b.ListCredentials(ctx, 0, "%%%"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			var be *broker.Error
			if !errors.Is(err, broker.ErrInvalidArgument) || !errors.As(err, &be) || be.Field != tc.field {
				t.Fatalf("got %v; want ErrInvalidArgument on %s", err, tc.field)
			}
			if strings.Contains(err.Error(), long) || strings.Contains(err.Error(), "a\nb") {
				t.Fatal("the error echoes the input")
			}
		})
	}
	after := e.stored("cred")
	if after.Generation != before.Generation || after.ClientSecrets[0] != testSecret {
		t.Fatalf("bad input changed the record: generation %d -> %d", before.Generation, after.Generation)
	}
	if ids, _, _ := b.ListCredentials(ctx, 0, ""); len(ids) != 1 {
		t.Fatalf("%d credentials stored; want 1", len(ids))
	}
	if st := e.idp.Stats(); st.RefreshRequests != 0 {
		t.Fatal("bad input reached the IdP")
	}
}

func TestListPagesThroughEveryCredential(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		e.credential(b, id)
	}
	ctx := context.Background()
	var got []string
	token := ""
	for range 10 {
		recs, next, err := b.ListCredentials(ctx, 2, token)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			got = append(got, r.ID)
		}
		if next == "" {
			break
		}
		token = next
	}
	if strings.Join(got, ",") != "a,b,c,d,e" {
		t.Fatalf("listed %v", got)
	}
	if err := b.DeleteCredential(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteCredential(ctx, "c"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
	if _, err := b.GetToken(ctx, "c", 0); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("GetToken after delete: %v", err)
	}
}

func TestClientCredentialsGrant(t *testing.T) {
	e := newEnv(t, fakeidp.Options{})
	b := e.broker(nil)
	ctx := context.Background()
	if _, err := b.PutCredential(ctx, broker.Credential{ID: "cc", TokenURL: e.tokenURL, ClientID: testClientID,
		ClientSecrets: []string{testSecret}, GrantType: broker.GrantClientCredentials, AuthStyle: broker.AuthStylePost}, ""); err != nil {
		t.Fatal(err)
	}
	tok, err := b.GetToken(ctx, "cc", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !e.accepted(tok.AccessToken) || e.idp.Stats().ClientCredentials != 1 {
		t.Fatal("client_credentials token not issued or refused")
	}
}
