package redisstore_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

// TestPreflight: each Redis URL that disagrees with its server in a way
// that waiting will not fix is ErrMisconfigured, with a one-line message
// that holds no password; an unreachable server is not. (A redis:// URL
// against a Cluster node is checked through the binary, in cmd/broker's
// TestBinaryFatalStart, which starts the one Cluster this needs.)
func TestPreflight(t *testing.T) {
	const pw = "SECRET-preflight-pw"
	plain := redistest.Start(t)
	locked := redistest.Start(t)
	if err := locked.NewClient(t).ConfigSet(context.Background(), "requirepass", pw).Err(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := l.Addr().String()
	l.Close()

	for _, tc := range []struct {
		name, url, want string // want "" is success, "-" a transient error
	}{
		{"ok", plain.URL(), ""},
		{"ok with password", "redis://:" + pw + "@" + locked.Addr() + "/0", ""},
		{"wrong password", "redis://:wrong-" + pw + "@" + locked.Addr() + "/0", "WRONGPASS"},
		{"no password", "redis://" + locked.Addr() + "/0", "NOAUTH"},
		{"password the server lacks", "redis://:" + pw + "@" + plain.Addr() + "/0", ""}, // go-redis lets that pass
		{"db out of range", "redis://" + plain.Addr() + "/99", "database number is out of range"},
		{"cluster url, single server", "redis+cluster://" + plain.Addr(), "not a Cluster node"},
		{"unreachable", "redis://:" + pw + "@" + down + "/0?max_retries=-1&dial_timeout=200ms", "-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := redisstore.NewClient(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = redisstore.Preflight(ctx, c, tc.url)
			switch tc.want {
			case "":
				if err != nil {
					t.Fatalf("Preflight = %v; want nil", err)
				}
			case "-":
				if err == nil || errors.Is(err, redisstore.ErrMisconfigured) {
					t.Fatalf("Preflight = %v; want a transient error", err)
				}
			default:
				if !errors.Is(err, redisstore.ErrMisconfigured) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Preflight = %v; want ErrMisconfigured containing %q", err, tc.want)
				}
			}
			if err != nil && (strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), "\n")) {
				t.Errorf("message %q holds the password or several lines", err)
			}
		})
	}
}
