package broker_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// TestTokenURLPolicy: https, or http to loopback; never link-local or
// metadata addresses; --allow-insecure-token-urls and --token-url-allow.
func TestTokenURLPolicy(t *testing.T) {
	strict := broker.TokenURLPolicy{}
	insecure := broker.TokenURLPolicy{AllowInsecure: true}
	allow, err := broker.ParseHostPatterns("idp.example.com, *.corp.example ,127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	listed := broker.TokenURLPolicy{Allow: allow}
	for _, tc := range []struct {
		policy broker.TokenURLPolicy
		url    string
		want   string // "" accepted
	}{
		{strict, "https://idp.example.com/token", ""},
		{strict, "http://127.0.0.1:9090/token", ""},
		{strict, "http://[::1]:9090/token", ""},
		{strict, "http://localhost/token", ""},
		{strict, "http://idp.example.com/token", "must be https"},
		{strict, "http://10.0.0.5/token", "must be https"},
		{insecure, "http://idp:9090/token", ""},
		{strict, "https://169.254.169.254/latest/meta-data", "link-local or cloud metadata"},
		{insecure, "http://169.254.169.254/token", "link-local or cloud metadata"},
		{strict, "https://[fd00:ec2::254]/token", "link-local or cloud metadata"},
		{strict, "https://[fe80::1]/token", "link-local"},
		{strict, "http://metadata.google.internal/computeMetadata", "cloud metadata service"},
		{strict, "https://0.0.0.0/token", "unspecified"},
		{listed, "https://idp.example.com/token", ""},
		{listed, "https://IDP.EXAMPLE.COM./token", ""},
		{listed, "https://login.corp.example/token", ""},
		{listed, "https://corp.example/token", "not in --token-url-allow"},
		{listed, "https://evil.example.com/token", "not in --token-url-allow"},
		{listed, "http://127.0.0.1:1/token", ""},
	} {
		err := tc.policy.Check("credential.token_url", tc.url)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v %s: %v; want accepted", tc.policy, tc.url, err)
		case tc.want != "" && (!errors.Is(err, broker.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v %s: %v; want an invalid argument containing %q", tc.policy, tc.url, err, tc.want)
		}
	}
	for _, bad := range []string{"https://idp.example.com", "idp.example.com:443", "*", "a b"} {
		if _, err := broker.ParseHostPatterns(bad); err == nil {
			t.Errorf("ParseHostPatterns(%q) accepted", bad)
		}
	}
}
