package redisstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/redistest"
)

func TestNewClientConnects(t *testing.T) {
	srv := redistest.Start(t)
	c, err := redisstore.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctxT(t)).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestNewClientURLs(t *testing.T) {
	t.Run("single", func(t *testing.T) {
		c := mustClient(t, "rediss://u:p%40ss@db.example:6380/3?dial_timeout=2s")
		o := c.(*redis.Client).Options()
		if o.Addr != "db.example:6380" || o.DB != 3 || o.Username != "u" || o.Password != "p@ss" ||
			o.TLSConfig == nil || o.DialTimeout != 2*time.Second || !o.ContextTimeoutEnabled {
			t.Fatalf("options %+v", o)
		}
	})
	t.Run("context timeouts off", func(t *testing.T) {
		c := mustClient(t, "redis://localhost:6379?context_timeout_enabled=false")
		if c.(*redis.Client).Options().ContextTimeoutEnabled {
			t.Fatal("context_timeout_enabled=false ignored")
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		c := mustClient(t, "redis+sentinel://u:pw@s1:26379,s2:26379,s3:26380/mymaster/2?sentinel_password=spw")
		o := c.(*redis.Client).Options()
		if o.DB != 2 || o.Username != "u" || o.Password != "pw" || !o.ContextTimeoutEnabled || o.TLSConfig != nil {
			t.Fatalf("options %+v", o)
		}
	})
	t.Run("sentinel tls", func(t *testing.T) {
		c := mustClient(t, "rediss+sentinel://s1:26379/mymaster")
		if c.(*redis.Client).Options().TLSConfig == nil {
			t.Fatal("no TLS")
		}
	})
	t.Run("cluster", func(t *testing.T) {
		c := mustClient(t, "rediss+cluster://u:pw@n1:6379,n2:6379,n3:6379?read_timeout=1s")
		o := c.(*redis.ClusterClient).Options()
		if strings.Join(o.Addrs, ",") != "n1:6379,n2:6379,n3:6379" || o.Username != "u" || o.Password != "pw" ||
			o.TLSConfig == nil || o.ReadTimeout != time.Second || !o.ContextTimeoutEnabled {
			t.Fatalf("options %+v", o)
		}
	})

	const pw = "hunter2-SECRET"
	for _, bad := range []string{
		"",
		"localhost:6379",
		"http://u:" + pw + "@localhost",
		"redis://u:" + pw + "@localhost:notaport",
		"redis://u:" + pw + "@a:1,b:2",
		"redis://u:" + pw + "@localhost/notadb",
		"redis://u:" + pw + "@localhost?nosuchoption=1",
		"redis://u:" + pw + "/x@localhost",
		"redis://u:" + pw + "@localhost?context_timeout_enabled=maybe",
		"redis://u@localhost?password=" + pw + "&nosuchoption=1",
		"redis://u:" + pw + "@local host",
		"redis+sentinel://u:" + pw + "@s1:26379",
		"redis+sentinel://u:" + pw + "@s1:26379/m/1/2",
		"redis+sentinel://u:" + pw + "@s1:26379/m/x",
		"redis+cluster://u:" + pw + "@n1:6379/0",
		"redis+cluster://u:" + pw + "@n1:6379,,n2:6379",
		"redis+other://u:" + pw + "@n1:6379",
		"redis://u:" + pw + "@localhost#frag",
	} {
		c, err := redisstore.NewClient(bad)
		if err == nil {
			c.Close()
			t.Errorf("NewClient(%q) succeeded", bad)
			continue
		}
		if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("NewClient(%q): error shows the password: %v", bad, err)
		}
	}
}

func mustClient(t *testing.T, url string) redis.UniversalClient {
	t.Helper()
	c, err := redisstore.NewClient(url)
	if err != nil {
		t.Fatalf("NewClient(%q): %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct {
		url, msg string
		hidden   []string
	}{
		{"redis://u:hunter2@db:6379/0", "dial tcp: redis://u:hunter2@db:6379/0: refused, password hunter2", []string{"hunter2"}},
		{"redis://:p%40ss@db:6379", "auth p@ss failed for p%40ss", []string{"p@ss", "p%40ss"}},
		{"redis+sentinel://u:pw1@s1,s2/m?sentinel_password=spw-SECRET&dial_timeout=1s", "sentinel spw-SECRET, server pw1", []string{"spw-SECRET", "pw1"}},
		{"redis://u:a/b@db:6379", "bad password a/b", []string{"a/b"}},
	} {
		got := redisstore.RedactURL(tc.msg, tc.url)
		for _, s := range tc.hidden {
			if strings.Contains(got, s) {
				t.Errorf("RedactURL(%q, %q) = %q: shows %q", tc.msg, tc.url, got, s)
			}
		}
		if !strings.Contains(got, "xxxxx") {
			t.Errorf("RedactURL(%q, %q) = %q: nothing marked as redacted", tc.msg, tc.url, got)
		}
	}
	if got := redisstore.RedactURL("dial tcp 127.0.0.1:6379: refused", "redis://127.0.0.1:6379/0"); got != "dial tcp 127.0.0.1:6379: refused" {
		t.Errorf("a URL without secrets changed the message: %q", got)
	}
}
