package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// serveIdP runs the test IdP alone until ctx ends, after printing to stdout
// how to put its freshly seeded credential into a broker by hand.
func serveIdP(ctx context.Context, cfg config, stdout io.Writer) error {
	addr := cfg.idpAddr
	if addr == "" {
		addr = defaultIdPOnlyAddr
	}
	secret := randomID(24)
	idp := fakeidp.New(fakeidp.Options{
		Addr:           addr,
		Clients:        map[string]string{demoClientID: secret},
		AccessTokenTTL: cfg.tokenTTL,

		RevokePreviousAccessToken: cfg.revokePrevious,
	})
	if err := idp.Start(); err != nil {
		return fmt.Errorf("starting the test IdP on %s: %w", addr, err)
	}
	defer idp.Close()
	seed := idp.Seed(demoClientID, demoScope)

	cred := map[string]any{
		"id":            "demo",
		"token_url":     idp.TokenURL(),
		"client_id":     demoClientID,
		"client_secret": secret,
		"scopes":        []string{demoScope},
		"refresh_token": seed,
	}
	if cfg.revokePrevious {
		cred["revokes_previous_access_token"] = true
	}
	put, err := json.Marshal(map[string]any{"credential": cred})
	if err != nil {
		return err
	}
	// The JSON holds no single quote (tokens and secrets are base64url), so
	// it can be single-quoted for the shell.
	fmt.Fprintf(stdout, `Test IdP serving (strict: refresh tokens rotate; a reused one revokes its family).
  token URL:      %s
  protected API:  %s
  client id:      %s
  client secret:  %s
  refresh token:  %s
  access tokens live %s.

Put the credential into a broker on %[7]s:
  grpcurl -plaintext -d '%[8]s' %[7]s tokenbroker.v1.AdminService/PutCredential
Then get a token:
  grpcurl -plaintext -d '{"credential_id":"demo"}' %[7]s tokenbroker.v1.TokenService/GetToken

Serving until interrupted (Ctrl-C).
`, idp.TokenURL(), idp.ResourceURL(), demoClientID, secret, seed, cfg.tokenTTL, defaultBrokerAddr, put)
	<-ctx.Done()
	return idp.Close()
}
