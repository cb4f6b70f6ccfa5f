package redisstore

import (
	"errors"
	"net/url"
	"slices"
	"strconv"
	"strings"

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
// Errors never contain the password.
func NewClient(rawURL string) (redis.UniversalClient, error) {
	c, err := newClient(rawURL)
	if err != nil {
		return nil, redactErr(err, rawURL)
	}
	return c, nil
}

func newClient(rawURL string) (redis.UniversalClient, error) {
	scheme, rest, ok := strings.Cut(rawURL, "://")
	if !ok {
		return nil, errors.New("missing scheme, e.g. redis://")
	}
	base, mode, _ := strings.Cut(strings.ToLower(scheme), "+")
	if base != "redis" && base != "rediss" {
		return nil, errors.New("unsupported scheme " + strconv.Quote(scheme))
	}

	// Split rest into authority, path and query by hand: the authority may
	// list several hosts, which net/url does not accept.
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	if strings.Contains(tail, "#") {
		return nil, errors.New("a fragment (#) is not allowed")
	}
	path, rawQuery, _ := strings.Cut(tail, "?")
	userinfo, hostList := "", authority
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, hostList = authority[:i+1], authority[i+1:]
	}
	hosts := strings.Split(hostList, ",")
	for _, h := range hosts {
		if h == "" {
			return nil, errors.New("empty host")
		}
	}
	query, err := url.ParseQuery(rawQuery)
	if err != nil {
		return nil, errors.New("malformed query")
	}
	ctxTimeout := true
	if query.Has("context_timeout_enabled") {
		if ctxTimeout, err = strconv.ParseBool(query.Get("context_timeout_enabled")); err != nil {
			return nil, errors.New("context_timeout_enabled is not a boolean")
		}
		query.Del("context_timeout_enabled")
	}

	switch mode {
	case "":
		if len(hosts) != 1 {
			return nil, errors.New("several hosts need redis+sentinel:// or redis+cluster://")
		}
		o, err := redis.ParseURL(base + "://" + userinfo + hosts[0] + path + encodeQuery(query))
		if err != nil {
			return nil, err
		}
		o.ContextTimeoutEnabled = ctxTimeout
		return redis.NewClient(o), nil

	case "sentinel":
		segs := strings.Split(strings.Trim(path, "/"), "/")
		if segs[0] == "" || len(segs) > 2 {
			return nil, errors.New("redis+sentinel:// needs the path /master[/db]")
		}
		query.Set("master_name", segs[0])
		db := ""
		if len(segs) == 2 {
			db = "/" + segs[1]
		}
		sentinelUser, sentinelPass := query.Get("sentinel_username"), query.Get("sentinel_password")
		query.Del("sentinel_username")
		query.Del("sentinel_password")
		for _, h := range hosts[1:] {
			query.Add("addr", h)
		}
		// ParseFailoverURL takes the userinfo as the sentinels' credentials;
		// ours are the servers'.
		o, err := redis.ParseFailoverURL(base + "://" + userinfo + hosts[0] + db + encodeQuery(query))
		if err != nil {
			return nil, err
		}
		o.Username, o.Password = o.SentinelUsername, o.SentinelPassword
		o.SentinelUsername, o.SentinelPassword = sentinelUser, sentinelPass
		o.ContextTimeoutEnabled = ctxTimeout
		return redis.NewFailoverClient(o), nil

	case "cluster":
		if strings.Trim(path, "/") != "" {
			return nil, errors.New("redis+cluster:// takes no database number")
		}
		for _, h := range hosts[1:] {
			query.Add("addr", h)
		}
		o, err := redis.ParseClusterURL(base + "://" + userinfo + hosts[0] + encodeQuery(query))
		if err != nil {
			return nil, err
		}
		o.ContextTimeoutEnabled = ctxTimeout
		return redis.NewClusterClient(o), nil
	}
	return nil, errors.New("unsupported scheme " + strconv.Quote(scheme))
}

func encodeQuery(q url.Values) string {
	if len(q) == 0 {
		return ""
	}
	return "?" + q.Encode()
}

// redactErr turns an error about rawURL into one that holds no credential:
// errors of net/url quote the whole URL, so only their gist is kept, and
// anything that looks like a password in rawURL is blanked out of the rest.
func redactErr(err error, rawURL string) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return errors.New("redisstore: invalid Redis URL: malformed URL")
	}
	msg := err.Error()
	for _, s := range secrets(rawURL) {
		if len(s) > 0 {
			msg = strings.ReplaceAll(msg, s, "xxxxx")
		}
	}
	return errors.New("redisstore: invalid Redis URL: " + msg)
}

// secrets lists the substrings of rawURL that may be or hold a password,
// longest first.
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
