package loadbench

import (
	"context"
	"errors"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// floorMethod is the no-op method of the floor server.
const floorMethod = "/tokenbroker.bench.Floor/Call"

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
// reads.
func startFloor(resp *pb.GetTokenResponse) (*floorServer, error) {
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
