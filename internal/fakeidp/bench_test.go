package fakeidp_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/fakeidp"
	"github.com/tokenbroker/tokenbroker/internal/fakeidp/fakeidptest"
)

// BenchmarkRefresh measures one rotating refresh over loopback HTTP with a
// kept-alive connection, client side included.
func BenchmarkRefresh(b *testing.B) {
	s := fakeidptest.Start(b, fakeidp.Options{Clients: map[string]string{clientID: secret}})
	client := httpClient(b)
	rt := s.Seed(clientID)
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(refreshForm(rt).Encode()))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		// Cheap extraction of the new refresh token, to keep the benchmark
		// about the server.
		_, after, _ := strings.Cut(string(body), `"refresh_token":"`)
		rt, _, _ = strings.Cut(after, `"`)
	}
}

// BenchmarkResource measures one /resource check of a live access token.
func BenchmarkResource(b *testing.B) {
	s := fakeidptest.Start(b, fakeidp.Options{Clients: map[string]string{clientID: secret}})
	client := httpClient(b)
	r := post(b, s, refreshForm(s.Seed(clientID)), basic(clientID, secret))
	at := r.str("access_token")
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequest(http.MethodGet, s.ResourceURL(), nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+at)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
