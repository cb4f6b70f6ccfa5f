package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
)

// seedPath is where --idp-only hands out a fresh refresh token per request.
const seedPath = "/seed"

// serveIdP runs the test IdP alone until ctx ends, after printing to stdout
// how to put its freshly seeded credential into a broker by hand. Besides
// the IdP's own paths it serves seedPath: each GET seeds a new token family
// and answers the PutCredential request for it, so that a second broker (or
// a second try) need not reuse a refresh token that was already spent.
func serveIdP(ctx context.Context, cfg config, stdout io.Writer) error {
	addr := cfg.idpAddr
	if addr == "" {
		addr = defaultIdPOnlyAddr
	}
	secret := randomID(24)
	idp := fakeidp.New(fakeidp.Options{
		Clients:        map[string]string{demoClientID: secret},
		AccessTokenTTL: cfg.tokenTTL,

		RevokePreviousAccessToken: cfg.revokePrevious,
	})
	defer idp.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("starting the test IdP on %s: %w", addr, err)
	}
	base := "http://" + ln.Addr().String()
	putRequest := func() ([]byte, error) {
		cred := map[string]any{
			"id":            "demo",
			"token_url":     base + fakeidp.TokenPath,
			"client_id":     demoClientID,
			"client_secret": secret,
			"scopes":        []string{demoScope},
			"refresh_token": idp.Seed(demoClientID, demoScope),
		}
		if cfg.revokePrevious {
			cred["revokes_previous_access_token"] = true
		}
		return json.Marshal(map[string]any{"credential": cred})
	}
	mux := http.NewServeMux()
	mux.Handle("/", idp.Handler())
	mux.HandleFunc("GET "+seedPath, func(w http.ResponseWriter, _ *http.Request) {
		put, err := putRequest()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(append(put, '\n'))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	put, err := putRequest()
	if err != nil {
		return err
	}
	var shown struct {
		Credential struct {
			RefreshToken string `json:"refresh_token"`
		} `json:"credential"`
	}
	_ = json.Unmarshal(put, &shown)
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

This refresh token seeds one broker, once: its first refresh rotates it, and
presenting it again (a second broker, a restarted dev-mode broker, the same
PutCredential twice after a refresh) is a reuse that revokes the family.
For a fresh one each time:
  curl -s %[9]s | grpcurl -plaintext -d @ %[7]s tokenbroker.v1.AdminService/PutCredential

Serving until interrupted (Ctrl-C).
`, base+fakeidp.TokenPath, base+fakeidp.ResourcePath, demoClientID, secret, shown.Credential.RefreshToken, cfg.tokenTTL, defaultBrokerAddr, put, base+seedPath)
	select {
	case <-ctx.Done():
	case err := <-served:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
