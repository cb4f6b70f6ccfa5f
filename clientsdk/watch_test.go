package clientsdk_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// watchBroker is fakeBroker with WatchToken: each stream gets the current
// token ("tok-N" at generation N), then whatever the test pushes.
type watchBroker struct {
	*fakeBroker
	opened atomic.Int64 // streams opened
	open   atomic.Int64 // streams open now

	smu     sync.Mutex
	streams map[*fakeStream]struct{}
	lag     []string // the next GetToken calls answer with these tokens, as replicas behind
}

type fakeStream struct {
	send chan *tbv1.WatchTokenResponse
	end  chan error
}

func newWatchBroker() *watchBroker {
	return &watchBroker{fakeBroker: newFakeBroker(), streams: map[*fakeStream]struct{}{}}
}

func (f *watchBroker) message() *tbv1.WatchTokenResponse {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == 0 {
		f.mint()
	}
	return &tbv1.WatchTokenResponse{AccessToken: fmt.Sprintf("tok-%d", f.gen), TokenType: "Bearer",
		ExpiresAt: timestamppb.New(f.expiry), Generation: uint64(f.gen)}
}

func (f *watchBroker) WatchToken(req *tbv1.WatchTokenRequest, stream tbv1.TokenService_WatchTokenServer) error {
	f.opened.Add(1)
	f.open.Add(1)
	defer f.open.Add(-1)
	s := &fakeStream{send: make(chan *tbv1.WatchTokenResponse, 16), end: make(chan error, 1)}
	f.smu.Lock()
	f.streams[s] = struct{}{}
	f.smu.Unlock()
	defer func() {
		f.smu.Lock()
		delete(f.streams, s)
		f.smu.Unlock()
	}()
	if err := stream.Send(f.message()); err != nil {
		return err
	}
	for {
		select {
		case m := <-s.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

func (f *watchBroker) GetToken(ctx context.Context, req *tbv1.GetTokenRequest) (*tbv1.GetTokenResponse, error) {
	resp, err := f.fakeBroker.GetToken(ctx, req)
	f.smu.Lock()
	defer f.smu.Unlock()
	if err == nil && len(f.lag) > 0 {
		resp.AccessToken, f.lag = f.lag[0], f.lag[1:]
	}
	return resp, err
}

// push sends m on every open stream.
func (f *watchBroker) push(m *tbv1.WatchTokenResponse) {
	f.smu.Lock()
	defer f.smu.Unlock()
	for s := range f.streams {
		s.send <- m
	}
}

// rotateAndPush mints the next token and pushes it.
func (f *watchBroker) rotateAndPush() string {
	f.rotate()
	m := f.message()
	f.push(m)
	return m.AccessToken
}

// announce pushes the rotating notice of the current token.
func (f *watchBroker) announce() {
	m := f.message()
	f.push(&tbv1.WatchTokenResponse{Generation: m.Generation, Rotating: true})
}

// endStreams ends every open stream with err.
func (f *watchBroker) endStreams(err error) {
	f.smu.Lock()
	defer f.smu.Unlock()
	for s := range f.streams {
		s.end <- err
	}
}

func startWatchBroker(t testing.TB, f *watchBroker, opts ...clientsdk.DialOption) *clientsdk.Client {
	t.Helper()
	dialer := serveBufconn(t, func(s *grpc.Server) { tbv1.RegisterTokenServiceServer(s, f) })
	c, err := clientsdk.Dial(bufconnTarget, append([]clientsdk.DialOption{clientsdk.WithInsecure(), clientsdk.WithDialOptions(dialer)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The sources of one credential share one stream; a pushed token replaces
// their caches with no broker call.
func TestWatchReplacesCachesOnPush(t *testing.T) {
	f := newWatchBroker()
	c := startWatchBroker(t, f)
	a, b := c.TokenSource("cred"), c.TokenSource("cred", clientsdk.WithEarlyExpiry(time.Second))
	if tok := mustToken(t, a); tok.AccessToken != "tok-1" {
		t.Fatalf("first token %q", tok.AccessToken)
	}
	mustToken(t, b)
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	gets := f.gets.Load()
	next := f.rotateAndPush()
	waitFor(t, "the pushed token in both caches", func() bool {
		return mustToken(t, a).AccessToken == next && mustToken(t, b).AccessToken == next
	})
	if f.gets.Load() != gets || f.opened.Load() != 1 {
		t.Fatalf("%d more GetToken calls, %d streams; want none and one", f.gets.Load()-gets, f.opened.Load())
	}
}

// After a rotating notice the old token is not handed out: callers wait for
// the successor the stream brings, without asking the broker.
func TestWatchRotatingNoticeHoldsTheOldToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchBroker()
		c := startWatchBroker(t, f)
		ts := c.TokenSource("cred")
		old := mustToken(t, ts)
		waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
		gets := f.gets.Load()
		f.announce()
		waitFor(t, "the notice", func() bool { return clientsdk.Cached(ts) == nil })
		got := make(chan string, 10)
		for range 10 {
			go func() {
				tok, err := ts.Token()
				if err != nil {
					t.Error(err)
					got <- ""
					return
				}
				got <- tok.AccessToken
			}()
		}
		synctest.Wait() // every caller is waiting
		if len(got) != 0 {
			t.Fatalf("a caller got %q while the token was being replaced", <-got)
		}
		next := f.rotateAndPush()
		for range 10 {
			if tok := <-got; tok != next || tok == old.AccessToken {
				t.Fatalf("a caller got %q; want the successor %q", tok, next)
			}
		}
		if f.gets.Load() != gets {
			t.Fatalf("%d GetToken calls while waiting for the successor; want none", f.gets.Load()-gets)
		}
	})
}

// A broker reply that lags behind the stream (a token already superseded)
// is neither handed out nor cached: the call is made again.
func TestWatchRefusesSupersededReply(t *testing.T) {
	clock := newFakeClock()
	f := newWatchBroker()
	f.ttl = time.Minute
	f.setClock(clock.now)
	c := startWatchBroker(t, f)
	ts := c.TokenSource("cred")
	clientsdk.SetClock(ts, clock.now)
	mustToken(t, ts)
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	next := f.rotateAndPush() // tok-2; tok-1 is superseded
	waitFor(t, "the push", func() bool { return mustToken(t, ts).AccessToken == next })

	clock.set(55 * time.Second) // tok-2 goes stale in the cache: a GetToken call, which mints tok-3
	f.smu.Lock()
	f.lag = []string{"tok-1"} // the first reply comes from a replica behind
	f.smu.Unlock()
	gets := f.gets.Load()
	if tok := mustToken(t, ts); tok.AccessToken != "tok-3" || f.gets.Load()-gets != 2 {
		t.Fatalf("got %q after %d GetToken calls; want tok-3 after 2 (the superseded reply refused)", tok.AccessToken, f.gets.Load()-gets)
	}
	if cur := clientsdk.Cached(ts); cur == nil || cur.AccessToken != "tok-3" {
		t.Fatal("the cache does not hold tok-3")
	}
}

// The stream reconnects after it broke, and pushes reach the caches again.
func TestWatchReconnects(t *testing.T) {
	f := newWatchBroker()
	c := startWatchBroker(t, f)
	ts := c.TokenSource("cred")
	mustToken(t, ts)
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	f.endStreams(status.Error(codes.Unavailable, "replica restarting"))
	waitFor(t, "a second stream", func() bool { return f.opened.Load() == 2 && f.open.Load() == 1 })
	next := f.rotateAndPush()
	waitFor(t, "the push after the reconnect", func() bool { return mustToken(t, ts).AccessToken == next })
}

// A broker without WatchToken: one attempt, then unary calls as before.
func TestWatchUnimplementedFallsBackToGetToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeBroker()
		var watches atomic.Int64
		dialer := serveBufconn(t, func(s *grpc.Server) { tbv1.RegisterTokenServiceServer(s, f) },
			grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				watches.Add(1)
				return h(srv, ss)
			}))
		c, err := clientsdk.Dial(bufconnTarget, clientsdk.WithInsecure(), clientsdk.WithDialOptions(dialer))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ts := c.TokenSource("cred")
		mustToken(t, ts)
		waitFor(t, "the watch attempt", func() bool { return watches.Load() == 1 })
		f.rotate()
		if tok, err := ts.Invalidate(context.Background(), "tok-1"); err != nil || tok.AccessToken == "tok-1" {
			t.Fatalf("Invalidate: %v", err)
		}
		time.Sleep(300 * time.Millisecond) // well past the first reconnect delays, on the bubble's clock
		synctest.Wait()
		if n := watches.Load(); n != 1 {
			t.Fatalf("%d WatchToken calls to a broker without it; want 1 (the next after a minute)", n)
		}
	})
}

// WithoutWatch (Client) and WithWatch(false) (TokenSource) open no stream.
func TestWithoutWatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newWatchBroker()
		off := startWatchBroker(t, f, clientsdk.WithoutWatch())
		mustToken(t, off.TokenSource("cred"))
		on := startWatchBroker(t, f)
		mustToken(t, on.TokenSource("other", clientsdk.WithWatch(false)))
		synctest.Wait()
		if n := f.opened.Load(); n != 0 {
			t.Fatalf("%d streams opened; want none", n)
		}
	})
}

// The stream ends once no TokenSource of the credential is left, and at
// Client.Close.
func TestWatchEndsWithItsSources(t *testing.T) {
	f := newWatchBroker()
	c := startWatchBroker(t, f)
	func() {
		mustToken(t, c.TokenSource("cred"))
	}()
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	waitFor(t, "the stream to end once its source is collected", func() bool {
		runtime.GC()
		return f.open.Load() == 0
	})
	ts := c.TokenSource("cred")
	mustToken(t, ts)
	waitFor(t, "a new stream", func() bool { return f.open.Load() == 1 })
	c.Close()
	waitFor(t, "the stream to end at Close", func() bool { return f.open.Load() == 0 })
	runtime.KeepAlive(ts)
}

// The cached path stays allocation-free while the stream is up.
func TestWatchedCachedPathDoesNotAllocate(t *testing.T) {
	f := newWatchBroker()
	ts := startWatchBroker(t, f).TokenSource("cred")
	mustToken(t, ts)
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	if n := testing.AllocsPerRun(1000, func() { _, _ = ts.Token() }); n != 0 {
		t.Fatalf("%v allocations per cached Token call; want 0", n)
	}
}

func BenchmarkTokenSourceCachedWatched(b *testing.B) {
	f := newWatchBroker()
	ts := startWatchBroker(b, f).TokenSource("cred")
	mustToken(b, ts)
	waitFor(b, "the stream", func() bool { return f.open.Load() == 1 })
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ts.Token(); err != nil {
			b.Fatal(err)
		}
	}
}

// A credential deleted and put again starts its generations over: the
// stream that comes back is followed from its first message.
func TestWatchFollowsACredentialPutAgain(t *testing.T) {
	f := newWatchBroker()
	c := startWatchBroker(t, f)
	ts := c.TokenSource("cred")
	mustToken(t, ts)
	waitFor(t, "the stream", func() bool { return f.open.Load() == 1 })
	f.rotateAndPush()
	f.rotateAndPush() // generation 3
	f.endStreams(status.Error(codes.PermissionDenied, "credential deleted"))
	f.mu.Lock()
	f.gen = 0 // put again: generation 1 is its first token
	f.mu.Unlock()
	waitFor(t, "the stream again", func() bool { return f.opened.Load() == 2 && f.open.Load() == 1 })
	next := f.rotateAndPush() // tok-2 at generation 2, below the 3 seen before
	waitFor(t, "the token of the credential put again", func() bool { return mustToken(t, ts).AccessToken == next })
}
