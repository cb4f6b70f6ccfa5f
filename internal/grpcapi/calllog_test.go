package grpcapi

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// TestScrubAddresses: IP addresses, with or without port, go; times, URLs'
// host names and plain text stay.
func TestScrubAddresses(t *testing.T) {
	for in, want := range map[string]string{
		`Post "https://idp.example/token": dial tcp: lookup idp.example on 10.0.0.2:53: no such host`: `Post "https://idp.example/token": dial tcp: lookup idp.example on [address]: no such host`,
		`dial tcp 192.168.1.7:443: connect: connection refused`:                                       `dial tcp [address]: connect: connection refused`,
		`dial tcp [fd00:ec2::254]:80: i/o timeout`:                                                    `dial tcp [address]: i/o timeout`,
		`lookup idp on fe80::1%eth0: refused`:                                                         `lookup idp on [address]%eth0: refused`,
		`backing off after: HTTP 503 (sent at 2026-12-02T01:57:52Z)`:                                  `backing off after: HTTP 503 (sent at 2026-12-02T01:57:52Z)`,
	} {
		if got := scrubAddresses(in); got != want {
			t.Errorf("scrubAddresses(%q) = %q; want %q", in, got, want)
		}
	}
	st := status.New(codes.Unavailable, "lookup idp on 10.0.0.2:53: no such host")
	if got := forCaller(st, false).Message(); got != "lookup idp on [address]: no such host" {
		t.Errorf("non-admin message %q", got)
	}
	if got := forCaller(st, true).Message(); got != st.Message() {
		t.Errorf("admin message %q; want it whole", got)
	}
}

// TestFailureLogRateLimited: a storm of failed calls on one credential logs
// one WARN line with its cause per interval; another credential has its
// own; refusals of the request stay at INFO.
func TestFailureLogRateLimited(t *testing.T) {
	var buf bytes.Buffer
	s := &Server{log: slog.New(slog.NewJSONHandler(&buf, nil))}
	cause := errors.New("redis: connection refused")
	fail := func(id string) {
		err := &broker.Error{Kind: broker.ErrStoreUnavailable, CredentialID: id, Err: cause}
		s.logCall(context.Background(), "/tokenbroker.v1.TokenService/GetToken", time.Now(), toStatus(err, id), err, id, broker.Caller{})
	}
	for range 100 {
		fail("a")
	}
	fail("b")
	notFound := &broker.Error{Kind: broker.ErrNotFound, CredentialID: "c"}
	s.logCall(context.Background(), "/m", time.Now(), toStatus(notFound, "c"), notFound, "c", broker.Caller{})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines; want 3:\n%s", len(lines), buf.String())
	}
	if !strings.Contains(lines[0], `"level":"WARN"`) || !strings.Contains(lines[0], `"credential_id":"a"`) || !strings.Contains(lines[0], `"cause":"redis: connection refused"`) {
		t.Errorf("first line %s", lines[0])
	}
	if !strings.Contains(lines[1], `"credential_id":"b"`) || !strings.Contains(lines[2], `"level":"INFO"`) {
		t.Errorf("lines %s", buf.String())
	}
	var l logLimiter
	now := time.Now()
	l.allow("a", now, time.Second)
	l.allow("a", now, time.Second)
	l.allow("a", now, time.Second)
	if ok, n := l.allow("a", now.Add(time.Second), time.Second); !ok || n != 2 {
		t.Errorf("after the interval: %v, %d suppressed; want true, 2", ok, n)
	}
}
