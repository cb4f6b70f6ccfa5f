package upstream_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/upstream"
)

func TestAuthCodeURL(t *testing.T) {
	u := (&upstream.Client{}).AuthCodeURL(broker.AuthCodeRequest{
		AuthURL: "https://idp.example/authorize?tenant=a", ClientID: "c 1", RedirectURL: "https://b.example/oauth2/callback",
		Scopes: []string{"a", "b"}, State: "st", Verifier: "verifier-verifier-verifier-verifier-verifier", Extra: map[string]string{"prompt": "consent"},
	})
	p, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := p.Query()
	sum := sha256.Sum256([]byte("verifier-verifier-verifier-verifier-verifier"))
	want := map[string]string{"tenant": "a", "response_type": "code", "client_id": "c 1", "redirect_uri": "https://b.example/oauth2/callback",
		"scope": "a b", "state": "st", "code_challenge": base64.RawURLEncoding.EncodeToString(sum[:]), "code_challenge_method": "S256", "prompt": "consent"}
	for k, v := range want {
		if q.Get(k) != v {
			t.Errorf("%s = %q, want %q (%s)", k, q.Get(k), v, u)
		}
	}
	if strings.Contains(u, "verifier-verifier") {
		t.Error("the URL holds the verifier")
	}
}

func TestExchangeCodeAndPollDevice(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Type", "application/json")
		switch r.PostForm.Get("grant_type") {
		case "authorization_code":
			if r.PostForm.Get("code_verifier") != "the-verifier" || r.PostForm.Get("redirect_uri") != "https://b.example/oauth2/callback" {
				w.WriteHeader(400)
				fmt.Fprint(w, `{"error":"invalid_grant","error_description":"code CODE-SECRET-1 does not fit"}`)
				return
			}
			fmt.Fprint(w, `{"access_token":"at","token_type":"Bearer","expires_in":60,"refresh_token":"rt"}`)
		case "urn:ietf:params:oauth:grant-type:device_code":
			w.WriteHeader(400)
			fmt.Fprintf(w, `{"error":%q}`, strings.TrimPrefix(r.PostForm.Get("device_code"), "DEVICE-CODE-"))
		}
	})
	c := &upstream.Client{}
	req := broker.UpstreamRequest{TokenURL: e.srv.URL, ClientID: "c", ClientSecrets: []string{"s3cret-1"}, AuthStyle: broker.AuthStylePost}
	tok, err := c.ExchangeCode(context.Background(), req, "CODE-SECRET-1", "the-verifier", "https://b.example/oauth2/callback")
	if err != nil || tok.AccessToken != "at" || tok.RefreshToken != "rt" || time.Until(tok.Expiry) <= 0 {
		t.Fatalf("ExchangeCode = %+v, %v", tok, err)
	}
	if f := e.reqs[0].form; f.Get("client_secret") != "s3cret-1" || f.Get("code") != "CODE-SECRET-1" {
		t.Fatalf("the exchange sent %v", f)
	}
	_, err = c.ExchangeCode(context.Background(), req, "CODE-SECRET-1", "another", "https://b.example/oauth2/callback")
	var ue *broker.UpstreamError
	if !errors.As(err, &ue) || ue.Class != broker.Permanent || ue.Code != "invalid_grant" || strings.Contains(err.Error(), "CODE-SECRET-1") {
		t.Fatalf("a refused exchange: %v", err)
	}
	for _, code := range []string{"authorization_pending", "slow_down", "access_denied", "expired_token"} {
		_, err := c.PollDevice(context.Background(), req, "DEVICE-CODE-"+code)
		if !errors.As(err, &ue) || ue.Code != code || ue.Class == broker.Unanswered {
			t.Errorf("poll answered %s: %v (code %q)", code, err, ue.Code)
		}
	}
}

func TestDeviceAuthBasicClientAuth(t *testing.T) {
	e := newEndpoint(t, func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Type", "application/json")
		if u, p, ok := r.BasicAuth(); !ok || u != "c" || p != "s3cret-2" {
			w.WriteHeader(401)
			fmt.Fprint(w, `{"error":"invalid_client"}`)
			return
		}
		fmt.Fprint(w, `{"device_code":"dc","user_code":"ABCD-EFGH","verification_uri":"https://idp.example/device","expires_in":600,"interval":3}`)
	})
	c := &upstream.Client{}
	req := broker.UpstreamRequest{TokenURL: "https://idp.example/token", ClientID: "c", ClientSecrets: []string{"old-secret", "s3cret-2"}, Scopes: []string{"x"}}
	da, err := c.DeviceAuth(context.Background(), req, e.srv.URL)
	if err != nil || da.DeviceCode != "dc" || da.UserCode != "ABCD-EFGH" || da.Interval != 3*time.Second || time.Until(da.ExpiresAt) < 9*time.Minute {
		t.Fatalf("DeviceAuth = %+v, %v", da, err)
	}
	if len(e.reqs) != 2 || e.reqs[1].form.Get("scope") != "x" {
		t.Fatalf("requests %+v: want the first secret rejected, the second accepted", e.reqs)
	}
	_, err = c.DeviceAuth(context.Background(), broker.UpstreamRequest{ClientID: "c", ClientSecrets: []string{"wrong"}}, e.srv.URL)
	var ue *broker.UpstreamError
	if !errors.As(err, &ue) || ue.Class != broker.Permanent || ue.Code != "invalid_client" {
		t.Fatalf("a rejected client: %v", err)
	}
}
