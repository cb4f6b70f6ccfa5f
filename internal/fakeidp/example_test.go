package fakeidp_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"golang.org/x/oauth2"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// Start an IdP, seed a token family and refresh it with golang.org/x/oauth2;
// then present the spent refresh token again, as a second worker with a stale
// copy would, and watch the IdP revoke the family.
func Example() {
	idp := fakeidp.New(fakeidp.Options{
		Clients:        map[string]string{"worker": "s3cret"},
		AccessTokenTTL: time.Minute,
	})
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()

	ctx := context.Background()
	conf := &oauth2.Config{
		ClientID:     "worker",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
	rt := idp.Seed("worker", "read")

	// A token holding only a refresh token is expired, so the TokenSource
	// refreshes it at once.
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("rotated:", tok.RefreshToken != rt)

	resp, err := oauth2.NewClient(ctx, oauth2.StaticTokenSource(tok)).Get(idp.ResourceURL())
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("resource:", resp.Status)

	_, err = conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	if re, ok := errors.AsType[*oauth2.RetrieveError](err); ok {
		fmt.Println("reuse:", re.ErrorCode)
	}
	info, _ := idp.Lookup(tok.AccessToken)
	fmt.Println("family revoked:", info.Revoked)

	st := idp.Stats()
	fmt.Println("refreshes:", st.Refreshes, "reuses:", st.Reuses, "revocations:", st.Revocations)
	// Output:
	// rotated: true
	// resource: 200 OK
	// reuse: invalid_grant
	// family revoked: true
	// refreshes: 1 reuses: 1 revocations: 1
}

// Freeze the IdP for longer than the client waits, as a paused Dex would be:
// the client gives up, but the IdP, resumed, still processes the request and
// rotates, so the refresh token the client kept is spent.
func ExampleServer_Pause() {
	answered := make(chan fakeidp.Event, 1)
	idp := fakeidp.New(fakeidp.Options{
		Clients: map[string]string{"worker": "s3cret"},
		OnEvent: func(ev fakeidp.Event) {
			if ev.Path == fakeidp.TokenPath {
				answered <- ev
			}
		},
	})
	if err := idp.Start(); err != nil {
		log.Fatal(err)
	}
	defer idp.Close()
	conf := &oauth2.Config{
		ClientID:     "worker",
		ClientSecret: "s3cret",
		Endpoint:     oauth2.Endpoint{TokenURL: idp.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
	rt := idp.Seed("worker")

	idp.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	_, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: rt}).Token()
	cancel()
	fmt.Println("client gave up:", errors.Is(err, context.DeadlineExceeded))

	// Wait until the IdP has seen the client leave, then wake it.
	if err := idp.WaitStall(context.Background(), func(st fakeidp.StallState) bool { return st.ClientGone == 1 }); err != nil {
		log.Fatal(err)
	}
	idp.Resume()
	ev := <-answered
	fmt.Println("processed after the client left:", ev.ClientGone, ev.Status)
	info, _ := idp.Lookup(rt)
	fmt.Println("refresh token spent:", info.Spent)
	// Output:
	// client gave up: true
	// processed after the client left: true 200
	// refresh token spent: true
}
