package redisstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient returns a go-redis client for a Redis URL of one of these forms:
//
//	redis://[user:password@]host:port[/db][?option=value&...]
//	rediss://...                      the same over TLS
//	redis+sentinel://[user:password@]host1:26379[,host2:26379...]/master[/db][?...]
//	rediss+sentinel://...             the same over TLS
//	redis+cluster://[user:password@]host1:6379[,host2:6379...][?...]
//	rediss+cluster://...              the same over TLS
//
// With Sentinel, the hosts are the sentinels and master is the name of the
// monitored master; user and password are those of the Redis servers, and
// the sentinels' own credentials, if they need any, go in the options
// sentinel_username and sentinel_password. With Cluster, the hosts are seed
// nodes and there is no database number. Reserved characters in a user or
// password must be percent-encoded.
//
// The options are go-redis's, in snake case (dial_timeout=2s, pool_size=20,
// max_retries=3, skip_verify=true, ...; see redis.ParseURL,
// redis.ParseFailoverURL and redis.ParseClusterURL). Unlike go-redis's
// default, the client honours context deadlines for socket I/O
// (context_timeout_enabled defaults to true), so a caller's deadline bounds
// every call even while Redis is frozen.
//
// NewClient does not dial. Errors never contain the password.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	c, err := newClient(rawURL)
	if err != nil {
		return nil, redactErr(err, rawURL)
	}
	return c, nil
}

// redisURL is a Redis URL taken apart: net/url cannot parse it, since the
// authority may list several hosts.
type redisURL struct {
	scheme     string   // as given, for messages
	base       string   // redis or rediss
	mode       string   // "", "sentinel" or "cluster"
	userinfo   string   // "user:password@" as given, or ""
	hosts      []string // at least one, none empty
	path       string   // "" or starting with "/"
	query      url.Values
	ctxTimeout bool // context_timeout_enabled, removed from query
}

func newClient(rawURL string) (redis.UniversalClient, error) {
	u, err := parseRedisURL(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.mode {
	case "":
		return newSingleClient(u)
	case "sentinel":
		return newSentinelClient(u)
	case "cluster":
		return newClusterClient(u)
	}
	return nil, errors.New("unsupported scheme " + strconv.Quote(u.scheme))
}

// parseRedisURL splits rawURL into its parts and checks what is common to
// every mode.
func parseRedisURL(rawURL string) (*redisURL, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, errors.New("missing scheme, e.g. redis://")
	}
	u := &redisURL{scheme: scheme}
	u.base, u.mode, _ = strings.Cut(strings.ToLower(scheme), "+")
	if u.base != "redis" && u.base != "rediss" {
		return nil, errors.New("unsupported scheme " + strconv.Quote(scheme))
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if strings.Contains(tail, "#") {
		return nil, errors.New("a fragment (#) is not allowed")
	}
	path, rawQuery, _ := strings.Cut(tail, "?")
	u.path = path
	hostList := authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		u.userinfo, hostList = authority[:i+1], authority[i+1:]
	}
	u.hosts = strings.Split(hostList, ",")
	if slices.Contains(u.hosts, "") {
		return nil, errors.New("empty host")
	}
	var err error
	if u.query, err = url.ParseQuery(rawQuery); err != nil {
		return nil, errors.New("malformed query")
	}
	if u.ctxTimeout, err = takeContextTimeout(u.query); err != nil {
		return nil, err
	}
	return u, nil
}

// takeContextTimeout removes context_timeout_enabled from q and returns its
// value, true when absent.
func takeContextTimeout(q url.Values) (bool, error) {
	if !q.Has("context_timeout_enabled") {
		return true, nil
	}
	v, err := strconv.ParseBool(q.Get("context_timeout_enabled"))
	if err != nil {
		return false, errors.New("context_timeout_enabled is not a boolean")
	}
	q.Del("context_timeout_enabled")
	return v, nil
}

// extraHosts adds every host but the first to q as go-redis's addr option.
func (u *redisURL) extraHosts() {
	for _, h := range u.hosts[1:] {
		u.query.Add("addr", h)
	}
}

// goRedisURL is the single-host URL go-redis's parsers take.
func (u *redisURL) goRedisURL(path string) string {
	s := u.base + "://" + u.userinfo + u.hosts[0] + path
	if len(u.query) > 0 {
		s += "?" + u.query.Encode()
	}
	return s
}

func newSingleClient(u *redisURL) (redis.UniversalClient, error) {
	if len(u.hosts) != 1 {
		return nil, errors.New("several hosts need redis+sentinel:// or redis+cluster://")
	}
	o, err := redis.ParseURL(u.goRedisURL(u.path))
	if err != nil {
		return nil, err
	}
	o.ContextTimeoutEnabled = u.ctxTimeout
	return redis.NewClient(o), nil
}

func newSentinelClient(u *redisURL) (redis.UniversalClient, error) {
	segs := strings.Split(strings.Trim(u.path, "/"), "/")
	if segs[0] == "" || len(segs) > 2 {
		return nil, errors.New("redis+sentinel:// needs the path /master[/db]")
	}
	u.query.Set("master_name", segs[0])
	db := ""
	if len(segs) == 2 {
		db = "/" + segs[1]
	}
	sentinelUser, sentinelPass := u.query.Get("sentinel_username"), u.query.Get("sentinel_password")
	u.query.Del("sentinel_username")
	u.query.Del("sentinel_password")
	u.extraHosts()
	o, err := redis.ParseFailoverURL(u.goRedisURL(db))
	if err != nil {
		return nil, err
	}
	// ParseFailoverURL takes the userinfo as the sentinels' credentials;
	// ours are the servers'.
	o.Username, o.Password = o.SentinelUsername, o.SentinelPassword
	o.SentinelUsername, o.SentinelPassword = sentinelUser, sentinelPass
	o.ContextTimeoutEnabled = u.ctxTimeout
	return redis.NewFailoverClient(o), nil
}

func newClusterClient(u *redisURL) (redis.UniversalClient, error) {
	if strings.Trim(u.path, "/") != "" {
		return nil, errors.New("redis+cluster:// takes no database number")
	}
	u.extraHosts()
	o, err := redis.ParseClusterURL(u.goRedisURL(""))
	if err != nil {
		return nil, err
	}
	o.ContextTimeoutEnabled = u.ctxTimeout
	return redis.NewClusterClient(o), nil
}

// redactErr turns an error about rawURL into one that holds no credential:
// errors of net/url quote the whole URL, so only their gist is kept, and
// anything that looks like a password in rawURL is blanked out of the rest.
func redactErr(err error, rawURL string) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return errors.New("redisstore: invalid Redis URL: malformed URL")
	}
	return errors.New("redisstore: invalid Redis URL: " + RedactURL(err.Error(), rawURL))
}

// RedactURL returns msg with every secret the Redis URL rawURL may hold
// blanked out: its user info, the password in it, and the value of any
// option whose name mentions a password (sentinel_password=...), each also
// in its percent-decoded form. Whatever logs a Redis URL, or an error from
// go-redis about one, passes it through RedactURL first.
func RedactURL(msg, rawURL string) string {
	for _, s := range secrets(rawURL) {
		msg = strings.ReplaceAll(msg, s, "xxxxx")
	}
	return msg
}

// secrets lists the non-empty substrings of rawURL that may be or hold a
// password, longest first.
func secrets(rawURL string) []string {
	var out []string
	add := func(s string) {
		if s == "" {
			return
		}
		out = append(out, s)
		if u, err := url.PathUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
		if u, err := url.QueryUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
	}
	_, rest, _ := strings.Cut(rawURL, "://")
	// Everything up to the last '@' may be userinfo, even when a reserved
	// character in the password ends the authority early.
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		add(rest[:i])
		if _, pass, ok := strings.Cut(rest[:i], ":"); ok {
			add(pass)
		}
	}
	if _, rawQuery, ok := strings.Cut(rest, "?"); ok {
		for _, kv := range strings.Split(rawQuery, "&") {
			k, v, _ := strings.Cut(kv, "=")
			if strings.Contains(strings.ToLower(k), "password") {
				add(v)
			}
		}
	}
	// Replace longer strings first, so a password inside a longer userinfo
	// does not leave the rest of it behind.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// SetLogger sends go-redis's own log lines (failed dials, pool trouble and
// the like) to log at WARN with component=go-redis, with the secrets of
// rawURL redacted, each kind of line at most once per goRedisLogEvery (a
// Redis that stays down would otherwise log every failed dial).
// go-redis has one logger per process, so this is for a process's main to
// call, once.
func SetLogger(log *slog.Logger, rawURL string) {
	redis.SetLogger(&goRedisLogger{log: log, url: rawURL, last: map[string]time.Time{}, dropped: map[string]int{}})
}

// goRedisLogEvery is the least time between two go-redis log lines of the
// same format.
const goRedisLogEvery = 30 * time.Second

type goRedisLogger struct {
	log *slog.Logger
	url string

	mu      sync.Mutex
	last    map[string]time.Time // by format
	dropped map[string]int       // lines of that format not logged since
}

func (l *goRedisLogger) Printf(ctx context.Context, format string, v ...any) {
	now := time.Now()
	l.mu.Lock()
	if t, ok := l.last[format]; ok && now.Sub(t) < goRedisLogEvery {
		l.dropped[format]++
		l.mu.Unlock()
		return
	}
	if len(l.last) > 64 { // go-redis has a few dozen formats; bound it anyway
		clear(l.last)
	}
	l.last[format] = now
	dropped := l.dropped[format]
	delete(l.dropped, format)
	l.mu.Unlock()
	attrs := []any{"component", "go-redis"}
	if dropped > 0 {
		attrs = append(attrs, "repeated", dropped)
	}
	l.log.WarnContext(ctx, RedactURL(fmt.Sprintf(format, v...), l.url), attrs...)
}
