package loadbench

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The methods of the floor server: Call does nothing, Wait waits at its
// gate.
const (
	floorMethod     = "/tokenbroker.bench.Floor/Call"
	floorWaitMethod = "/tokenbroker.bench.Floor/Wait"
)

// floorServer is the gRPC floor: a bare grpc-go server on a 127.0.0.1 TCP
// listener with the broker's transport settings (grpc-go's defaults and the
// same receive limit), and one unary method that does nothing but decode a
// GetTokenRequest and answer a fixed GetTokenResponse the size of the
// broker's. No interceptor, no stats handler, no authentication, no
// reflection: what is left is the cost of gRPC itself.
type floorServer struct {
	grpc   *grpc.Server
	addr   string
	served chan error
}

// startFloor starts the floor server; its answer is resp, which it only
// reads. Wait calls wait at g; g may be nil when no Wait is made.
func startFloor(resp *pb.GetTokenResponse, g *gate) (*floorServer, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &floorServer{
		grpc:   grpc.NewServer(grpc.MaxRecvMsgSize(grpcapi.DefaultMaxRecvMsgSize)),
		addr:   lis.Addr().String(),
		served: make(chan error, 1),
	}
	s.grpc.RegisterService(&grpc.ServiceDesc{
		ServiceName: "tokenbroker.bench.Floor",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Call",
			Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				if err := dec(new(pb.GetTokenRequest)); err != nil {
					return nil, err
				}
				return resp, nil
			},
		}, {
			MethodName: "Wait",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				if err := dec(new(pb.GetTokenRequest)); err != nil {
					return nil, err
				}
				if g == nil {
					return nil, status.Error(codes.FailedPrecondition, "no gate")
				}
				if err := g.wait(ctx); err != nil {
					return nil, status.FromContextError(err).Err()
				}
				return resp, nil
			},
		}},
	}, struct{}{})
	go func() { s.served <- s.grpc.Serve(lis) }()
	return s, nil
}

func (s *floorServer) close() error {
	s.grpc.Stop()
	return served(<-s.served)
}

// floorResponse returns a response the size of tok's, with none of its
// content.
func floorResponse(tok *pb.GetTokenResponse) *pb.GetTokenResponse {
	return &pb.GetTokenResponse{
		AccessToken: strings.Repeat("x", len(tok.GetAccessToken())),
		TokenType:   tok.GetTokenType(),
		ExpiresAt:   timestamppb.New(time.Now().Add(time.Hour)),
	}
}

// served filters the result of a Serve: a server stopped before Serve ran
// was stopped as asked.
func served(err error) error {
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// gate holds Wait calls until it opens. Reset it before each use.
type gate struct {
	mu      sync.Mutex
	arrived int
	first   time.Time // when the first call arrived
	open    chan struct{}
}

func (g *gate) reset() {
	g.mu.Lock()
	g.arrived, g.first, g.open = 0, time.Time{}, make(chan struct{})
	g.mu.Unlock()
}

// wait counts the caller in and waits until the gate opens or ctx ends.
func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	if g.arrived == 0 {
		g.first = time.Now()
	}
	g.arrived++
	open := g.open
	g.mu.Unlock()
	select {
	case <-open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// openWhen opens the gate once n callers wait at it and hold has passed
// since the first arrived. It returns when the first arrived and when the
// gate opened; it gives up when ctx ends.
func (g *gate) openWhen(ctx context.Context, n int, hold time.Duration) (first, opened time.Time, err error) {
	tick := time.NewTicker(100 * time.Microsecond)
	defer tick.Stop()
	for {
		g.mu.Lock()
		if g.arrived >= n && time.Since(g.first) >= hold {
			first, opened = g.first, time.Now()
			close(g.open)
			g.mu.Unlock()
			return first, opened, nil
		}
		g.mu.Unlock()
		select {
		case <-tick.C:
		case <-ctx.Done():
			return time.Time{}, time.Time{}, ctx.Err()
		}
	}
}
