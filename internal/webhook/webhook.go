// Package webhook delivers the broker's credential changes (the events of
// WatchCredentials) to HTTP endpoints, signed, retried, and once per event
// across replicas.
//
// Each endpoint has one deliverer at a time among the replicas: whoever
// holds the lease named after it (Store.TryLock of "webhook.<hash>") reads
// the change log after the endpoint's cursor (Store.LoadCursor), posts
// each change in order, retrying with a doubling backoff while the
// endpoint fails (network errors, 5xx, 408, 429) for up to MaxAttempts,
// and moves the cursor (Store.SaveCursor, fenced on the lease) after each.
// A replica that dies mid-delivery leaves the cursor before that change,
// so the next deliverer posts it again: receivers dedupe on
// Tokenbroker-Event-Id. A failing endpoint holds up only its own
// deliveries; nothing here runs on the path of GetToken.
//
// A request is a POST of JSON:
//
//	{"id": "1234", "event": {"credential_id": "crm", "kind": "REAUTH_REQUIRED", ...}}
//
// with the headers Tokenbroker-Event-Id (the change's number, also the
// WatchCredentials resume token), Tokenbroker-Timestamp (Unix seconds, at
// the attempt) and Tokenbroker-Signature: "v1=" and the hex HMAC-SHA256,
// under the shared secret, of the timestamp, a dot and the body. Receivers
// check it with Verify, which refuses timestamps outside a replay window.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
)

// Headers of a delivery.
const (
	HeaderEventID   = "Tokenbroker-Event-Id"
	HeaderTimestamp = "Tokenbroker-Timestamp"
	HeaderSignature = "Tokenbroker-Signature"
)

// DefaultReplayWindow is how far from now Verify accepts a timestamp.
const DefaultReplayWindow = 5 * time.Minute

// MinSecretLen is the shortest secret a Dispatcher accepts.
const MinSecretLen = 16

// Options configure a Dispatcher.
type Options struct {
	URLs   []string // the endpoints, each absolute http(s)
	Secret []byte   // the HMAC key; at least MinSecretLen bytes
	// Logger receives one line per delivery that failed or gave up, and
	// per endpoint taken over; nil means slog.Default().
	Logger *slog.Logger
	// HTTPClient posts the requests; nil means one with a 10 s timeout
	// that follows no redirect.
	HTTPClient *http.Client
	// MaxAttempts bounds the tries of one event (default 8); past them it
	// is skipped, with an error logged.
	MaxAttempts int
	// BackoffMin and BackoffMax bound the wait between tries (1 s, 1 min).
	BackoffMin, BackoffMax time.Duration
	// LeaseTTL is the lease of an endpoint's deliverer (default 15 s); a
	// replica that stops hands over within it.
	LeaseTTL time.Duration
}

// CheckURL reports whether u can be a webhook endpoint: an absolute http or
// https URL with a host and no user info.
func CheckURL(u string) error {
	p, err := url.Parse(u)
	switch {
	case err != nil:
		return errors.New("not a URL")
	case p.Scheme != "http" && p.Scheme != "https":
		return errors.New("must be an absolute http or https URL")
	case p.Host == "" || p.Hostname() == "":
		return errors.New("must name a host")
	case p.User != nil:
		return errors.New("must not hold user info")
	}
	return nil
}

// Redact returns u without user info, query or fragment, for logs: a
// webhook URL may carry a token of the receiver's.
func Redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable URL)"
	}
	p.User, p.RawQuery, p.Fragment, p.ForceQuery = nil, "", "", false
	return p.String()
}

// A Dispatcher delivers changes to its endpoints until Stop.
type Dispatcher struct {
	b     *broker.Broker
	store broker.Store
	opts  Options
	log   *slog.Logger

	cancel context.CancelFunc
	wg     sync.WaitGroup
	// from is where an endpoint without a cursor starts: the last change
	// when Start ran, so that what this replica changes once it serves
	// is delivered; fromOK says it could be read.
	from   uint64
	fromOK bool
}

// caller is the identity a Dispatcher watches the changes as.
var caller = broker.Caller{ID: "tokenbroker-webhooks", Admin: true}

// New returns a Dispatcher of b's changes, with store's leases and cursors
// (the Store b runs on). It starts nothing until Start.
func New(b *broker.Broker, store broker.Store, opts Options) (*Dispatcher, error) {
	if len(opts.Secret) < MinSecretLen {
		return nil, fmt.Errorf("webhook: the secret must be at least %d bytes", MinSecretLen)
	}
	for _, u := range opts.URLs {
		if err := CheckURL(u); err != nil {
			return nil, fmt.Errorf("webhook: %s: %v", Redact(u), err)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}}
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = time.Second
	}
	if opts.BackoffMax < opts.BackoffMin {
		opts.BackoffMax = max(time.Minute, opts.BackoffMin)
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 15 * time.Second
	}
	return &Dispatcher{b: b, store: store, opts: opts, log: opts.Logger}, nil
}

// Start begins delivering, one goroutine per endpoint. Call it before the
// replica serves: an endpoint new to the Store gets every change from then
// on.
func (d *Dispatcher) Start() {
	ctx, cancel := context.WithCancel(broker.NewContext(context.Background(), caller))
	d.cancel = cancel
	lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
	if n, err := d.store.LastChange(lctx); err == nil {
		d.from, d.fromOK = n, true
	}
	lcancel()
	for _, u := range d.opts.URLs {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.run(ctx, u)
		}()
	}
}

// Stop ends the deliveries and waits for them: an attempt in flight
// finishes (within the HTTP client's timeout), no new one starts.
func (d *Dispatcher) Stop() {
	if d.cancel != nil {
		d.cancel()
	}
	d.wg.Wait()
}

// Name is the lease and cursor name of an endpoint in the Store:
// "webhook." and 16 hex digits of the URL's SHA-256.
func Name(u string) string {
	sum := sha256.Sum256([]byte(u))
	return "webhook." + hex.EncodeToString(sum[:8])
}

// run delivers to u whenever this replica holds u's lease.
func (d *Dispatcher) run(ctx context.Context, u string) {
	name := Name(u)
	for ctx.Err() == nil {
		lease, err := d.store.TryLock(ctx, name, d.opts.LeaseTTL)
		if err == nil {
			err = d.lead(ctx, lease, u, name)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = lease.Release(rctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				d.log.Warn("webhook deliveries interrupted", "url", Redact(u), "error", err)
			}
		}
		if !sleep(ctx, d.opts.LeaseTTL/3) {
			return
		}
	}
}

// lead delivers to u from its cursor on, while lease holds.
func (d *Dispatcher) lead(ctx context.Context, lease broker.Lease, u, name string) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // keep the lease, or stop leading
		t := time.NewTicker(d.opts.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if lease.Extend(ctx, d.opts.LeaseTTL) != nil {
					cancel()
					return
				}
			}
		}
	}()
	pos, ok, err := d.store.LoadCursor(ctx, name)
	if err != nil {
		return err
	}
	if !ok { // a new endpoint: from the changes made since Start on
		pos = d.from
		if !d.fromOK {
			if pos, err = d.store.LastChange(ctx); err != nil {
				return err
			}
		}
		if err := d.store.SaveCursor(ctx, lease, name, pos); err != nil {
			return err
		}
	}
	err = d.b.WatchChanges(ctx, strconv.FormatUint(pos, 10), nil, func(c *broker.Change) error {
		if err := d.deliver(ctx, u, c); err != nil {
			return err
		}
		// Delivered: the cursor moves even if Stop came meanwhile, so the
		// next deliverer does not post it again.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		return d.store.SaveCursor(sctx, lease, name, c.Seq)
	})
	var be *broker.Error
	if errors.As(err, &be) && be.Field == "resume_token" {
		// The endpoint fell further behind than the log keeps.
		last, lerr := d.store.LastChange(ctx)
		if lerr == nil && d.store.SaveCursor(ctx, lease, name, last) == nil {
			d.log.Error("webhook events lost: the endpoint fell behind the change log", "url", Redact(u), "from", pos+1, "to", last)
		}
	}
	return err
}

// Body is what a delivery posts.
type Body struct {
	ID    string          `json:"id"`    // the change's number
	Event json.RawMessage `json:"event"` // tokenbroker.v1.CredentialEvent, protojson with field names as in the .proto
}

// encode returns the body of c.
func encode(c *broker.Change) ([]byte, error) {
	ev, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(grpcapi.ChangeView(c))
	if err != nil {
		return nil, err
	}
	return json.Marshal(Body{ID: c.ResumeToken(), Event: ev})
}

// deliver posts c to u until it is accepted, refused for good or
// MaxAttempts tries failed (those two are logged and skipped); it returns
// an error only when ctx ends.
func (d *Dispatcher) deliver(ctx context.Context, u string, c *broker.Change) error {
	body, err := encode(c)
	if err != nil {
		d.log.Error("webhook event not encodable", "event_id", c.Seq, "error", err)
		return nil
	}
	wait := d.opts.BackoffMin
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// An attempt under way is not cut by Stop (the client's timeout
		// bounds it): cut, it might have been received and be posted again.
		status, err := d.post(context.WithoutCancel(ctx), u, c.Seq, body)
		switch {
		case err == nil && status/100 == 2:
			return nil
		case err == nil && status/100 == 4 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests:
			d.log.Error("webhook event refused by the endpoint; skipped", "url", Redact(u), "event_id", c.Seq, "status", status)
			return nil
		case attempt >= d.opts.MaxAttempts:
			d.log.Error("webhook event not delivered; skipped", "url", Redact(u), "event_id", c.Seq, "attempts", attempt, "status", status, "error", errText(err))
			return nil
		}
		d.log.Warn("webhook delivery failed; retrying", "url", Redact(u), "event_id", c.Seq, "attempt", attempt, "status", status, "error", errText(err), "retry_in", wait)
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
		wait = min(2*wait, d.opts.BackoffMax)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error() // without the URL
	}
	return err.Error()
}

// post sends one signed attempt and returns the status.
func (d *Dispatcher) post(ctx context.Context, u string, seq uint64, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tokenbroker-webhook")
	req.Header.Set(HeaderEventID, strconv.FormatUint(seq, 10))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, "v1="+Sign(d.opts.Secret, ts, body))
	resp, err := d.opts.HTTPClient.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Sign returns the hex HMAC-SHA256 under secret of the timestamp, a dot and
// the body.
func Sign(secret []byte, ts int64, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strconv.FormatInt(ts, 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Errors of Verify.
var (
	ErrNoSignature  = errors.New("webhook: no or malformed signature headers")
	ErrStale        = errors.New("webhook: timestamp outside the replay window")
	ErrBadSignature = errors.New("webhook: signature does not match")
)

// Verify checks a delivery's signature against secret, and that its
// timestamp is within window (DefaultReplayWindow if 0) of now: a captured
// request replayed later is refused. Receivers should also dedupe on
// HeaderEventID: a delivery may come twice.
func Verify(secret []byte, h http.Header, body []byte, now time.Time, window time.Duration) error {
	if window <= 0 {
		window = DefaultReplayWindow
	}
	ts, err := strconv.ParseInt(h.Get(HeaderTimestamp), 10, 64)
	sig := h.Get(HeaderSignature)
	if err != nil || sig == "" {
		return ErrNoSignature
	}
	if d := now.Sub(time.Unix(ts, 0)); d > window || d < -window {
		return ErrStale
	}
	want := Sign(secret, ts, body)
	for _, part := range strings.Split(sig, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "v1="); ok && hmac.Equal([]byte(v), []byte(want)) {
			return nil
		}
	}
	return ErrBadSignature
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
