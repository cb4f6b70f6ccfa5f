package clientsdk_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// fakeBroker is a TokenService with the broker's token semantics in
// miniature: tokens "tok-1", "tok-2", ...; GetToken mints a new one when the
// current one is not valid for min_valid; InvalidateToken mints one only if
// the rejected token is the current one. It counts calls and can be told to
// fail.
type fakeBroker struct {
	tbv1.UnimplementedTokenServiceServer
	ttl time.Duration

	gets        atomic.Int64
	invalidates atomic.Int64

	mu       sync.Mutex
	now      func() time.Time
	gen      int
	expiry   time.Time
	errs     []error         // returned by the next calls, oldest first
	gate     chan struct{}   // when set, calls wait until it is closed
	pinned   bool            // InvalidateToken never mints (as when rate-limited)
	rejected []string        // InvalidateToken's rejected tokens
	minValid []time.Duration // the min_valid of each call
	auth     []string        // the authorization metadata of each call
}

func newFakeBroker() *fakeBroker {
	return &fakeBroker{ttl: time.Hour, now: time.Now}
}

func (f *fakeBroker) setClock(now func() time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = now
}

// current is the token the broker now hands out ("" before the first).
func (f *fakeBroker) current() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == 0 {
		return ""
	}
	return fmt.Sprintf("tok-%d", f.gen)
}

// rotate replaces the current token, as a refresh by another replica would.
func (f *fakeBroker) rotate() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mint()
}

func (f *fakeBroker) mint() {
	f.gen++
	f.expiry = f.now().Add(f.ttl)
}

func (f *fakeBroker) failNext(errs ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, errs...)
}

func (f *fakeBroker) setGate(g chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = g
}

func (f *fakeBroker) pin() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pinned = true
}

func (f *fakeBroker) rejectedTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.rejected...)
}

func (f *fakeBroker) minValids() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.minValid...)
}

func (f *fakeBroker) authHeaders() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}

// begin records a call, waits at the gate and pops a queued error.
func (f *fakeBroker) begin(ctx context.Context, minValid time.Duration) error {
	f.mu.Lock()
	f.minValid = append(f.minValid, minValid)
	md, _ := metadata.FromIncomingContext(ctx)
	f.auth = append(f.auth, md.Get("authorization")...)
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		return err
	}
	return nil
}

func (f *fakeBroker) GetToken(ctx context.Context, req *tbv1.GetTokenRequest) (*tbv1.GetTokenResponse, error) {
	f.gets.Add(1)
	if err := f.begin(ctx, req.GetMinValid().AsDuration()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	mv := req.GetMinValid().AsDuration()
	if mv == 0 {
		mv = min(30*time.Second, f.ttl/2)
	}
	if f.gen == 0 || f.expiry.Sub(f.now()) < mv {
		f.mint()
	}
	return &tbv1.GetTokenResponse{
		AccessToken: fmt.Sprintf("tok-%d", f.gen),
		TokenType:   "Bearer",
		ExpiresAt:   timestamppb.New(f.expiry),
	}, nil
}

func (f *fakeBroker) InvalidateToken(ctx context.Context, req *tbv1.InvalidateTokenRequest) (*tbv1.InvalidateTokenResponse, error) {
	f.invalidates.Add(1)
	f.mu.Lock()
	f.rejected = append(f.rejected, req.GetRejectedAccessToken())
	f.mu.Unlock()
	if err := f.begin(ctx, req.GetMinValid().AsDuration()); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == 0 || (!f.pinned && req.GetRejectedAccessToken() == fmt.Sprintf("tok-%d", f.gen)) {
		f.mint()
	}
	return &tbv1.InvalidateTokenResponse{
		AccessToken: fmt.Sprintf("tok-%d", f.gen),
		TokenType:   "Bearer",
		ExpiresAt:   timestamppb.New(f.expiry),
	}, nil
}

// serveBufconn serves the registered services on an in-memory listener until
// the test ends, and returns a dial option that reaches it.
func serveBufconn(t testing.TB, register func(*grpc.Server), opts ...grpc.ServerOption) grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(opts...)
	register(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return lis.DialContext(ctx)
	})
}

// bufconnTarget is the target to use with serveBufconn's dial option.
const bufconnTarget = "passthrough:///bufconn"

// startBroker serves f on bufconn and returns a Client over a plain
// connection (no service config, so no gRPC retries).
func startBroker(t testing.TB, f *fakeBroker) *clientsdk.Client {
	t.Helper()
	dialer := serveBufconn(t, func(s *grpc.Server) { tbv1.RegisterTokenServiceServer(s, f) })
	conn, err := grpc.NewClient(bufconnTarget, dialer, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return clientsdk.New(conn)
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	base time.Time
	off  atomic.Int64
}

func newFakeClock() *fakeClock {
	return &fakeClock{base: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) now() time.Time      { return c.base.Add(time.Duration(c.off.Load())) }
func (c *fakeClock) set(d time.Duration) { c.off.Store(int64(d)) }

// waitFor polls cond every 5ms for up to 10s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 2000 {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
