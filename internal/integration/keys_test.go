package integration_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
	"github.com/tokenbroker/tokenbroker/internal/seal"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

// A record sealed under key A reads after key B becomes primary; re-encryption
// moves it to B, after which A can be retired; a tampered record is refused
// with a clear error and never served.
func TestSealingKeyRotationAndTampering(t *testing.T) {
	srv := redistest.Start(t)
	idp := fakeidptest.Start(t, fakeidp.Options{Clients: map[string]string{clientID: secret}})
	keyA, _ := seal.GenerateKey()
	keyB, _ := seal.GenerateKey()
	admin := broker.NewContext(context.Background(), broker.Caller{ID: "ops", Admin: true})
	ctx := context.Background()
	raw := srv.NewClient(t)
	recordKey := "rot:{cred}:cred"

	replica := func(keys string) *broker.Broker {
		t.Helper()
		ring, err := seal.ParseKeyring(keys)
		if err != nil {
			t.Fatal(err)
		}
		client, err := redisstore.NewClient(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = client.Close() })
		s, err := redisstore.New(client, redisstore.Options{Prefix: "rot", Keyring: ring})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		b, err := broker.New(s, &upstream.Client{}, broker.Config{Open: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	sealedWith := func() string {
		t.Helper()
		data, err := raw.HGet(ctx, recordKey, "data").Bytes()
		if err != nil {
			t.Fatal(err)
		}
		id, err := seal.KeyID(data)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	underA := replica("a:" + keyA)
	seed := idp.Seed(clientID)
	if _, err := underA.PutCredential(admin, broker.Credential{ID: "cred", TokenURL: idp.TokenURL(), ClientID: clientID,
		ClientSecrets: []string{secret}}, seed); err != nil {
		t.Fatal(err)
	}
	tok, err := underA.GetToken(ctx, "cred", 0)
	if err != nil {
		t.Fatal(err)
	}
	if sealedWith() != "a" {
		t.Fatalf("sealed under %q; want a", sealedWith())
	}
	if data, _ := raw.HGet(ctx, recordKey, "data").Result(); strings.Contains(data, secret) || strings.Contains(data, tok.AccessToken) {
		t.Fatal("the stored record is not sealed")
	}

	// B becomes primary, A stays readable.
	rotating := replica("b:" + keyB + ",a:" + keyA)
	if got, err := rotating.GetToken(ctx, "cred", 0); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("a record under the old key does not read: %v", err)
	}
	r, err := rotating.ReencryptCredentials(admin, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	if r.PrimaryKey != "b" || r.Checked != 1 || r.Reencrypted != 1 || r.NextPageToken != "" {
		t.Fatalf("reencryption: %+v", r)
	}
	if sealedWith() != "b" {
		t.Fatalf("after reencryption sealed under %q; want b", sealedWith())
	}
	if r, err := rotating.ReencryptCredentials(admin, 0, ""); err != nil || r.Reencrypted != 0 {
		t.Fatalf("second pass: %+v, %v; want nothing left", r, err)
	}

	// A retired: still served, refreshes still work.
	onlyB := replica("b:" + keyB)
	if got, err := onlyB.GetToken(ctx, "cred", 0); err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("after retiring key a: %v", err)
	}
	if _, err := onlyB.RefreshCredential(admin, "cred"); err != nil {
		t.Fatal(err)
	}
	// A replica that only knows A cannot read it any more: a clear error.
	if _, err := replica("a:"+keyA).GetToken(ctx, "cred", 0); !errors.Is(err, broker.ErrUnreadable) {
		t.Fatalf("reading with a retired key: %v; want ErrUnreadable", err)
	}

	// Tampering: flip one byte of the sealed blob.
	data, err := raw.HGet(ctx, recordKey, "data").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-5] ^= 0x01
	if err := raw.HSet(ctx, recordKey, "data", data).Err(); err != nil {
		t.Fatal(err)
	}
	before := idp.Stats().TokenRequests
	fresh := replica("b:" + keyB)
	_, err = fresh.GetToken(ctx, "cred", 0)
	var be *broker.Error
	if !errors.Is(err, broker.ErrUnreadable) || !errors.As(err, &be) || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("tampered record: %v; want ErrUnreadable saying why", err)
	}
	if _, err := fresh.GetCredential(admin, "cred"); !errors.Is(err, broker.ErrUnreadable) {
		t.Fatalf("GetCredential of a tampered record: %v", err)
	}
	if _, err := fresh.RefreshCredential(admin, "cred"); !errors.Is(err, broker.ErrUnreadable) {
		t.Fatalf("RefreshCredential of a tampered record: %v", err)
	}
	if idp.Stats().TokenRequests != before {
		t.Fatal("a tampered record reached the IdP")
	}

	// Listing still works and shows it; re-encryption passes it by; the
	// operator's way out is to delete it and put it again.
	recs, _, err := fresh.ListCredentials(admin, 0, "")
	if err != nil || len(recs) != 1 || recs[0].ID != "cred" || recs[0].State != broker.StateUnreadable {
		t.Fatalf("ListCredentials with a tampered record: %v %+v", err, recs)
	}
	if r, err := fresh.ReencryptCredentials(admin, 0, ""); err != nil || r.Reencrypted != 0 {
		t.Fatalf("reencryption with a tampered record: %+v, %v", r, err)
	}
	if err := fresh.DeleteCredential(admin, "cred"); err != nil {
		t.Fatalf("deleting a tampered record: %v", err)
	}
	if _, err := fresh.PutCredential(admin, broker.Credential{ID: "cred", TokenURL: idp.TokenURL(), ClientID: clientID,
		ClientSecrets: []string{secret}}, idp.Seed(clientID)); err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.GetToken(ctx, "cred", 0); err != nil {
		t.Fatalf("after putting it again: %v", err)
	}
}
