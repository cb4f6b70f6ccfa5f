// Package grpcapi is the gRPC transport of tokenbroker: the tokenbroker.v1
// TokenService and AdminService over a broker.Broker, grpc.health.v1 and
// server reflection, and the interceptors every call passes (panic recovery,
// authentication, the one error table, an access log line).
//
// The services only convert: requests into the broker's arguments, records
// into their public view (never a refresh token or client secret), and the
// broker's errors into one gRPC code and a stable google.rpc.ErrorInfo
// reason each (see errorTable).
package grpcapi

import (
	"context"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// DefaultMaxRecvMsgSize is the largest request the server accepts unless
// Options say otherwise.
const DefaultMaxRecvMsgSize = 1 << 20

// Keepalive defaults of every Server; grpc.KeepaliveEnforcementPolicy and
// grpc.KeepaliveParams in Options.ServerOptions replace them.
//
// The enforcement policy lets clients ping every 20s or more, with or without
// calls in flight, so that clientsdk's 30s pings are welcome (a server that
// finds a client pinging too often closes its connection with
// ENHANCE_YOUR_CALM). The server pings a connection idle for a minute and
// closes it when the ping gets no answer within 20s, so that connections of
// vanished clients do not linger.
var (
	keepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 20 * time.Second, PermitWithoutStream: true}
	keepaliveParams      = keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}
)

// An Authenticator establishes who is calling. It must be safe for concurrent
// use. An error fails the call with UNAUTHENTICATED (PERMISSION_DENIED if it
// matches broker.ErrPermissionDenied); its text is not sent to the client
// unless it is a *broker.Error, whose message is safe by contract.
type Authenticator interface {
	Authenticate(ctx context.Context) (broker.Caller, error)
}

// A Limiter limits, per client, how often the methods that may call the IdP
// (limitedMethods: InvalidateToken and RefreshCredential) may be called. It
// must be safe for concurrent use. auth.Limiter is one.
type Limiter interface {
	// Allow reports whether the client may make one more call now, and
	// otherwise how long it should wait.
	Allow(clientID string) (ok bool, retryAfter time.Duration)
}

// Options configure a Server. The zero value is open dev mode.
type Options struct {
	// Authenticator authenticates every call but health and reflection. Nil
	// means open dev mode: every call runs as the anonymous broker.Caller,
	// and the Broker must then be configured with Config.Open.
	Authenticator Authenticator
	// Limiter limits the costly methods per authenticated client (all
	// anonymous callers share one budget); a call over the limit fails with
	// RESOURCE_EXHAUSTED, reason RATE_LIMITED and a RetryInfo. Nil means no
	// per-client limit (the broker still limits forced refreshes per
	// credential).
	Limiter Limiter
	// UnaryInterceptors run, in order, around every unary call that passed
	// authentication: inside authentication and panic recovery (the
	// caller is in the context: broker.CallerFrom; calls to health and
	// reflection have none), outside the per-client limit and the handler.
	// They see the broker's errors before they are converted to statuses;
	// Code tells the code each will be sent with. This is where audit's
	// interceptor goes. Nil entries are skipped.
	UnaryInterceptors []grpc.UnaryServerInterceptor
	// ObserveCall, when set, is told the method, final code and duration of
	// every call, authentication failures included, once the call is over
	// (for a WatchToken stream, which may last hours, once it ended, with
	// its whole life as the duration):
	// the hook for request metrics (metrics.Metrics.ObserveRPC), cheaper
	// than a gRPC stats handler. It must be fast and safe for concurrent use.
	ObserveCall func(method string, code codes.Code, d time.Duration)
	// Logger receives the access log: one line per call. Nil means
	// slog.Default().
	Logger *slog.Logger
	// MaxRecvMsgSize bounds a request's size in bytes; DefaultMaxRecvMsgSize
	// when zero or negative.
	MaxRecvMsgSize int
	// ServerOptions are added to the grpc.Server's options, for transport
	// credentials (TLS), stats handlers, keepalive settings and the like.
	// Interceptors given here run inside this package's, after
	// authentication, UnaryInterceptors and the per-client limit, and see
	// the broker's errors before they are converted to statuses.
	ServerOptions []grpc.ServerOption
}

// Server is the gRPC server of a Broker. Create it with NewServer, run it
// with Serve and stop it with Shutdown.
type Server struct {
	grpc     *grpc.Server
	stopping context.Context // ends when Drain or Shutdown begins; see tokenService
	stop     context.CancelFunc
	health   *health.Server
	auth     Authenticator
	limit    Limiter
	inner    []grpc.UnaryServerInterceptor
	observe  func(method string, code codes.Code, d time.Duration)
	log      *slog.Logger
	drain    drainState // health.go
	// failures limits the WARN lines about failed calls (calllog.go).
	failures logLimiter
}

// NewServer returns a Server of b's TokenService and AdminService, with
// grpc.health.v1 (SERVING for "", both services and LivenessService; see
// SetReady and Drain) and server reflection.
func NewServer(b *broker.Broker, opts Options) *Server {
	s := &Server{
		health:  health.NewServer(),
		auth:    opts.Authenticator,
		limit:   opts.Limiter,
		log:     opts.Logger,
		observe: opts.ObserveCall,
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, i := range opts.UnaryInterceptors {
		if i != nil {
			s.inner = append(s.inner, i)
		}
	}
	maxRecv := opts.MaxRecvMsgSize
	if maxRecv <= 0 {
		maxRecv = DefaultMaxRecvMsgSize
	}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.KeepaliveEnforcementPolicy(keepaliveEnforcement),
		grpc.KeepaliveParams(keepaliveParams),
		grpc.ChainUnaryInterceptor(s.unary),
		grpc.ChainStreamInterceptor(s.stream),
	}
	s.grpc = grpc.NewServer(append(sopts, opts.ServerOptions...)...)

	s.stopping, s.stop = context.WithCancel(context.Background())
	pb.RegisterTokenServiceServer(s.grpc, &tokenService{b: b, stopping: s.stopping})
	pb.RegisterAdminServiceServer(s.grpc, &adminService{b: b})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	for _, name := range append([]string{LivenessService}, readinessServices...) {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	return s
}

// Serve accepts connections on lis until Shutdown. It returns nil after
// Shutdown, and the listener's error otherwise.
func (s *Server) Serve(lis net.Listener) error {
	return s.grpc.Serve(lis)
}

// Shutdown stops the server: health turns NOT_SERVING for every service,
// the listener closes, WatchToken streams end at once with UNAVAILABLE
// (reason SHUTTING_DOWN), so that their clients watch another replica, and
// other calls in flight may finish until ctx ends; then the remaining
// connections are closed. Drain first to keep the listener answering while
// calls finish. It returns ctx's error when it had to close calls in
// flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.health.Shutdown()
	s.stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.grpc.GracefulStop()
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
		return ctx.Err()
	}
}
