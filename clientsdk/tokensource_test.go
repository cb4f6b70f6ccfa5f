package clientsdk_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/tokenbroker/tokenbroker/clientsdk"
)

var _ oauth2.TokenSource = (*clientsdk.TokenSource)(nil)

func TestTokenConcurrentCallersShareOneBrokerCall(t *testing.T) {
	f := newFakeBroker()
	gate := make(chan struct{})
	f.setGate(gate)
	ts := startBroker(t, f).TokenSource("cred")

	const n = 100
	var started, done sync.WaitGroup
	toks := make([]*oauth2.Token, n)
	errs := make([]error, n)
	for i := range n {
		started.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			started.Done()
			toks[i], errs[i] = ts.Token()
		}()
	}
	started.Wait()
	waitFor(t, "the first broker call", func() bool { return f.gets.Load() >= 1 })
	close(gate)
	done.Wait()

	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if toks[i] != toks[0] || toks[i].AccessToken != "tok-1" {
			t.Fatalf("caller %d got %q (%p), want the shared tok-1 (%p)", i, toks[i].AccessToken, toks[i], toks[0])
		}
	}
	if got := f.gets.Load(); got != 1 {
		t.Fatalf("broker calls = %d, want 1", got)
	}
}

func TestTokenCachedUntilEarlyExpiry(t *testing.T) {
	clock := newFakeClock()
	f := newFakeBroker()
	f.ttl = time.Minute
	f.setClock(clock.now)
	ts := startBroker(t, f).TokenSource("cred", clientsdk.WithEarlyExpiry(10*time.Second))
	clientsdk.SetClock(ts, clock.now)

	tok := mustToken(t, ts)
	if tok.AccessToken != "tok-1" || !tok.Expiry.Equal(clock.now().Add(time.Minute)) {
		t.Fatalf("got %q expiring %v", tok.AccessToken, tok.Expiry)
	}
	clock.set(49 * time.Second) // 11s left: still fresh
	if again := mustToken(t, ts); again != tok {
		t.Fatalf("at 49s got %q, want the cached token", again.AccessToken)
	}
	if got := f.gets.Load(); got != 1 {
		t.Fatalf("broker calls = %d, want 1", got)
	}
	clock.set(51 * time.Second) // 9s left: inside the early expiry
	next := mustToken(t, ts)
	if got := f.gets.Load(); got != 2 {
		t.Fatalf("broker calls = %d, want 2", got)
	}
	if next.AccessToken != "tok-2" {
		t.Fatalf("after early expiry got %q, want tok-2", next.AccessToken)
	}
	if again := mustToken(t, ts); again != next {
		t.Fatal("new token not cached")
	}
}

func TestTokenEarlyExpiryCappedForShortLivedTokens(t *testing.T) {
	clock := newFakeClock()
	f := newFakeBroker()
	f.ttl = 4 * time.Second
	f.setClock(clock.now)
	ts := startBroker(t, f).TokenSource("cred") // default early expiry 10s > ttl
	clientsdk.SetClock(ts, clock.now)

	tok := mustToken(t, ts)
	clock.set(1900 * time.Millisecond)
	if again := mustToken(t, ts); again != tok {
		t.Fatal("short-lived token not cached for half its life")
	}
	clock.set(2100 * time.Millisecond)
	if next := mustToken(t, ts); next == tok || next.AccessToken != "tok-2" {
		t.Fatalf("got %q after half the lifetime, want tok-2", next.AccessToken)
	}
	if got := f.gets.Load(); got != 2 {
		t.Fatalf("broker calls = %d, want 2", got)
	}
}

// TestTokenCachedUntilMinValid: a source asking for a minimum validity
// longer than its early expiry stops handing out a cached token once less
// than that is left, and asks the broker for it.
func TestTokenCachedUntilMinValid(t *testing.T) {
	clock := newFakeClock()
	f := newFakeBroker()
	f.ttl = 5 * time.Minute
	f.setClock(clock.now)
	ts := startBroker(t, f).TokenSource("cred", clientsdk.WithMinValid(time.Minute), clientsdk.WithEarlyExpiry(10*time.Second))
	clientsdk.SetClock(ts, clock.now)

	tok := mustToken(t, ts)
	clock.set(4*time.Minute - time.Second) // 61s left
	if again := mustToken(t, ts); again != tok {
		t.Fatalf("with 61s left got %q, want the cached token", again.AccessToken)
	}
	clock.set(4*time.Minute + time.Second) // 59s left: less than min valid
	next := mustToken(t, ts)
	if next.AccessToken != "tok-2" || next.Expiry.Sub(clock.now()) < time.Minute {
		t.Fatalf("with 59s left got %q expiring in %v, want tok-2 valid for a minute", next.AccessToken, next.Expiry.Sub(clock.now()))
	}
	if got := f.minValids(); len(got) != 2 || got[0] != time.Minute || got[1] != time.Minute {
		t.Fatalf("min_valid sent = %v, want [1m 1m]", got)
	}
}

// TestTokenMinValidNotCapped: the early expiry is capped at half the life a
// token has left when it arrives, the minimum validity is not. The broker
// may hand out a token well into its life (another source fetched it).
func TestTokenMinValidNotCapped(t *testing.T) {
	clock := newFakeClock()
	f := newFakeBroker()
	f.ttl = time.Minute
	f.setClock(clock.now)
	c := startBroker(t, f)
	mustToken(t, c.TokenSource("cred")) // tok-1, expiring at 60s
	ts := c.TokenSource("cred", clientsdk.WithMinValid(20*time.Second), clientsdk.WithEarlyExpiry(30*time.Second))
	clientsdk.SetClock(ts, clock.now)

	clock.set(35 * time.Second) // tok-1 has 25s left: the early expiry is capped at 12.5s
	tok := mustToken(t, ts)
	if tok.AccessToken != "tok-1" {
		t.Fatalf("got %q, want tok-1, which is still valid for 25s", tok.AccessToken)
	}
	clock.set(39 * time.Second) // 21s left
	if again := mustToken(t, ts); again != tok {
		t.Fatal("token not cached while it has more than min valid left")
	}
	clock.set(41 * time.Second) // 19s left
	if next := mustToken(t, ts); next.AccessToken != "tok-2" {
		t.Fatalf("with 19s left got %q, want tok-2", next.AccessToken)
	}
}

func TestTokenSendsMinValid(t *testing.T) {
	f := newFakeBroker()
	c := startBroker(t, f)
	mustToken(t, c.TokenSource("a", clientsdk.WithMinValid(45*time.Second)))
	mustToken(t, c.TokenSource("b"))
	got := f.minValids()
	if len(got) != 2 || got[0] != 45*time.Second || got[1] != 0 {
		t.Fatalf("min_valid sent = %v, want [45s 0s]", got)
	}
	// InvalidateToken asks for it too.
	ts := c.TokenSource("c", clientsdk.WithMinValid(45*time.Second))
	if _, err := ts.Invalidate(context.Background(), mustToken(t, ts).AccessToken); err != nil {
		t.Fatal(err)
	}
	if got := f.minValids(); len(got) != 4 || got[2] != 45*time.Second || got[3] != 45*time.Second {
		t.Fatalf("min_valid sent = %v, want [45s 0s 45s 45s]", got)
	}
}

func TestTokenErrorSharedByWaitersAndNotCached(t *testing.T) {
	f := newFakeBroker()
	gate := make(chan struct{})
	f.setGate(gate)
	f.failNext(brokerError(codes.FailedPrecondition, "REAUTH_REQUIRED"))
	ts := startBroker(t, f).TokenSource("cred")

	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = ts.Token()
		}()
	}
	waitFor(t, "the first broker call", func() bool { return f.gets.Load() >= 1 })
	close(gate)
	wg.Wait()
	// Callers that arrived while the call was in flight share its error;
	// any that came later made a call of their own, which succeeded.
	failed := 0
	for i, err := range errs {
		if err != nil {
			if !errors.Is(err, clientsdk.ErrReauthRequired) {
				t.Fatalf("caller %d: %v", i, err)
			}
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("no caller saw the broker's error")
	}
	if got, want := f.gets.Load(), int64(1+min(1, n-failed)); got != want {
		t.Fatalf("broker calls = %d, want %d (%d callers failed)", got, want, failed)
	}
	if tok := mustToken(t, ts); tok.AccessToken != "tok-1" {
		t.Fatalf("after the error got %q", tok.AccessToken)
	}
}

func TestTokenCallerGivingUpDoesNotFailOthers(t *testing.T) {
	f := newFakeBroker()
	gate := make(chan struct{})
	f.setGate(gate)
	ts := startBroker(t, f).TokenSource("cred")

	ctxA, cancelA := context.WithCancel(context.Background())
	errA := make(chan error, 1)
	go func() {
		_, err := ts.TokenContext(ctxA)
		errA <- err
	}()
	waitFor(t, "A's broker call", func() bool { return f.gets.Load() >= 1 })
	type result struct {
		tok *oauth2.Token
		err error
	}
	resB := make(chan result, 1)
	go func() {
		tok, err := ts.TokenContext(context.Background())
		resB <- result{tok, err}
	}()
	cancelA()
	if err := <-errA; !errors.Is(err, context.Canceled) {
		t.Fatalf("A: err = %v, want context.Canceled", err)
	}
	close(gate)
	b := <-resB
	if b.err != nil || b.tok.AccessToken != "tok-1" {
		t.Fatalf("B: %v, %v; want tok-1", b.tok, b.err)
	}
}

func TestTokenWaiterLeavesWhenItsContextEnds(t *testing.T) {
	f := newFakeBroker()
	gate := make(chan struct{})
	f.setGate(gate)
	defer close(gate)
	ts := startBroker(t, f).TokenSource("cred")

	go ts.Token() // the call that blocks at the gate; ends when the gate opens
	waitFor(t, "the first broker call", func() bool { return f.gets.Load() >= 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := ts.TokenContext(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
}

func TestInvalidateConcurrentReportsShareOneCall(t *testing.T) {
	f := newFakeBroker()
	ts := startBroker(t, f).TokenSource("cred")
	old := mustToken(t, ts)

	const n = 50
	toks := make([]*oauth2.Token, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks[i], errs[i] = ts.Invalidate(context.Background(), old.AccessToken)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || toks[i].AccessToken != "tok-2" {
			t.Fatalf("caller %d: %v, %v; want tok-2", i, toks[i], errs[i])
		}
	}
	if got := f.invalidates.Load(); got != 1 {
		t.Fatalf("InvalidateToken calls = %d, want 1", got)
	}
	if got := f.rejectedTokens(); got[0] != "tok-1" {
		t.Fatalf("rejected = %v", got)
	}
	if tok := mustToken(t, ts); tok.AccessToken != "tok-2" {
		t.Fatalf("cache holds %q, want tok-2", tok.AccessToken)
	}
	if got := f.gets.Load(); got != 1 {
		t.Fatalf("GetToken calls = %d, want 1", got)
	}
}

func TestInvalidateOfReplacedTokenKeepsCache(t *testing.T) {
	f := newFakeBroker()
	ts := startBroker(t, f).TokenSource("cred")
	old := mustToken(t, ts)
	cur, err := ts.Invalidate(context.Background(), old.AccessToken)
	if err != nil {
		t.Fatal(err)
	}
	// A late report of the old token finds a different, fresh token cached.
	again, err := ts.Invalidate(context.Background(), old.AccessToken)
	if err != nil || again != cur {
		t.Fatalf("got %v, %v; want the cached %q", again, err, cur.AccessToken)
	}
	if got := f.invalidates.Load(); got != 1 {
		t.Fatalf("InvalidateToken calls = %d, want 1", got)
	}
	if _, err := ts.Invalidate(context.Background(), ""); err == nil {
		t.Fatal("Invalidate of an empty token succeeded")
	}
}

func TestInvalidateErrorKeepsCache(t *testing.T) {
	f := newFakeBroker()
	ts := startBroker(t, f).TokenSource("cred")
	old := mustToken(t, ts)
	f.failNext(brokerError(codes.ResourceExhausted, "RATE_LIMITED", &errdetails.RetryInfo{}))
	if _, err := ts.Invalidate(context.Background(), old.AccessToken); !errors.Is(err, clientsdk.ErrRateLimited) {
		t.Fatalf("err = %v, want ErrRateLimited", err)
	}
	if tok := mustToken(t, ts); tok != old {
		t.Fatal("a failed Invalidate replaced the cache")
	}
}

func mustToken(t testing.TB, ts *clientsdk.TokenSource) *oauth2.Token {
	t.Helper()
	tok, err := ts.Token()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// brokerError is a status as the broker sends it: an ErrorInfo with reason
// (none if reason is empty), plus extra details.
func brokerError(code codes.Code, reason string, extra ...protoadapt.MessageV1) error {
	st := status.New(code, "broker says no")
	if reason == "" {
		return st.Err()
	}
	details := append([]protoadapt.MessageV1{&errdetails.ErrorInfo{Domain: clientsdk.ErrorDomain, Reason: reason}}, extra...)
	st, err := st.WithDetails(details...)
	if err != nil {
		panic(err)
	}
	return st.Err()
}
