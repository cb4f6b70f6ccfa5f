package grpcapi

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The services return the broker's errors as they are; the server's
// interceptors turn them into statuses through errorTable. The broker
// validates what it is given; the services check only what the conversion
// from protobuf can get wrong.

// tokenService implements tokenbroker.v1.TokenService over a Broker.
type tokenService struct {
	pb.UnimplementedTokenServiceServer
	b *broker.Broker
	// stopping ends when the Server begins to shut down: watch streams,
	// which never end on their own, end then with SHUTTING_DOWN, so that
	// their clients reconnect to another replica and GracefulStop need not
	// wait for them.
	stopping context.Context
}

func (s *tokenService) GetToken(ctx context.Context, req *pb.GetTokenRequest) (*pb.GetTokenResponse, error) {
	minValid, err := durationArg("min_valid", req.GetMinValid())
	if err != nil {
		return nil, err
	}
	tok, err := s.b.GetToken(ctx, req.GetCredentialId(), minValid)
	if err != nil {
		return nil, err
	}
	return getTokenResponse(tok), nil
}

// tokenResponse is a GetTokenResponse and its expiry in one allocation:
// the cached path's answer.
type tokenResponse struct {
	resp    pb.GetTokenResponse
	expires timestamppb.Timestamp
}

// getTokenResponse returns the answer of GetToken for tok.
func getTokenResponse(tok broker.Token) *pb.GetTokenResponse {
	r := new(tokenResponse)
	r.resp.AccessToken, r.resp.TokenType = tok.AccessToken, tok.TokenType
	if !tok.Expiry.IsZero() {
		r.expires.Seconds, r.expires.Nanos = tok.Expiry.Unix(), int32(tok.Expiry.Nanosecond())
		r.resp.ExpiresAt = &r.expires
	}
	return &r.resp
}

func (s *tokenService) InvalidateToken(ctx context.Context, req *pb.InvalidateTokenRequest) (*pb.InvalidateTokenResponse, error) {
	minValid, err := durationArg("min_valid", req.GetMinValid())
	if err != nil {
		return nil, err
	}
	tok, err := s.b.InvalidateToken(ctx, req.GetCredentialId(), req.GetRejectedAccessToken(), minValid)
	if err != nil {
		return nil, err
	}
	return &pb.InvalidateTokenResponse{
		AccessToken: tok.AccessToken,
		TokenType:   tok.TokenType,
		ExpiresAt:   timestamp(tok.Expiry),
	}, nil
}

// WatchToken streams the credential's tokens until the broker ends the watch
// (the error table then gives the status), the client goes away, or the
// Server shuts down (UNAVAILABLE, SHUTTING_DOWN).
func (s *tokenService) WatchToken(req *pb.WatchTokenRequest, stream pb.TokenService_WatchTokenServer) error {
	minValid, err := durationArg("min_valid", req.GetMinValid())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	err = s.b.WatchToken(ctx, req.GetCredentialId(), minValid, func(u broker.TokenUpdate) error {
		m := &pb.WatchTokenResponse{Generation: u.Generation, Rotating: u.Rotating}
		if !u.Rotating {
			m.AccessToken, m.TokenType, m.ExpiresAt = u.Token.AccessToken, u.Token.TokenType, timestamp(u.Token.Expiry)
		}
		return stream.Send(m)
	})
	if s.stopping.Err() != nil && stream.Context().Err() == nil {
		return &broker.Error{Kind: broker.ErrShuttingDown, CredentialID: req.GetCredentialId(),
			Detail: "the replica is shutting down; watch again", RetryAfter: 100 * time.Millisecond}
	}
	return err
}

// adminService implements tokenbroker.v1.AdminService over a Broker. It
// answers with public views only.
type adminService struct {
	pb.UnimplementedAdminServiceServer
	b *broker.Broker
}

func (s *adminService) PutCredential(ctx context.Context, req *pb.PutCredentialRequest) (*pb.PutCredentialResponse, error) {
	c, refreshToken, err := CredentialFromProto(req.GetCredential())
	if err != nil {
		return nil, err
	}
	rec, err := s.b.ReplaceCredential(ctx, c, refreshToken, req.GetClearAllowedClients())
	if err != nil {
		return nil, err
	}
	return &pb.PutCredentialResponse{Credential: publicView(rec)}, nil
}

func (s *adminService) GetCredential(ctx context.Context, req *pb.GetCredentialRequest) (*pb.GetCredentialResponse, error) {
	rec, err := s.b.GetCredential(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &pb.GetCredentialResponse{Credential: publicView(rec)}, nil
}

func (s *adminService) ListCredentials(ctx context.Context, req *pb.ListCredentialsRequest) (*pb.ListCredentialsResponse, error) {
	state, err := stateArg("state", req.GetState())
	if err != nil {
		return nil, err
	}
	recs, next, err := s.b.ListCredentials(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	recs = filterState(recs, state)
	resp := &pb.ListCredentialsResponse{
		Credentials:   make([]*pb.Credential, 0, len(recs)),
		NextPageToken: next,
	}
	for _, r := range recs {
		resp.Credentials = append(resp.Credentials, publicView(r))
	}
	return resp, nil
}

func (s *adminService) DeleteCredential(ctx context.Context, req *pb.DeleteCredentialRequest) (*pb.DeleteCredentialResponse, error) {
	if err := s.b.DeleteCredential(ctx, req.GetId()); err != nil {
		return nil, err
	}
	return &pb.DeleteCredentialResponse{}, nil
}

func (s *adminService) RefreshCredential(ctx context.Context, req *pb.RefreshCredentialRequest) (*pb.RefreshCredentialResponse, error) {
	rec, err := s.b.RefreshCredential(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &pb.RefreshCredentialResponse{Credential: publicView(rec)}, nil
}

func (s *adminService) ReencryptCredentials(ctx context.Context, req *pb.ReencryptCredentialsRequest) (*pb.ReencryptCredentialsResponse, error) {
	r, err := s.b.ReencryptCredentials(ctx, int(req.GetPageSize()), req.GetPageToken())
	if err != nil {
		return nil, err
	}
	return &pb.ReencryptCredentialsResponse{
		PrimaryKeyId:  r.PrimaryKey,
		Checked:       int32(r.Checked),
		Reencrypted:   int32(r.Reencrypted),
		NextPageToken: r.NextPageToken,
	}, nil
}
