package clientsdk

import (
	"context"
	"sync"
	"sync/atomic"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// CredentialsOption configures PerRPCCredentials and the client interceptors.
type CredentialsOption func(*credsConfig)

type credsConfig struct {
	allowInsecure bool
}

// AllowInsecure lets the token travel over a connection without transport
// security (plain-text gRPC), for local development and tests. Without it,
// such calls fail with codes.Unauthenticated before the token is sent.
func AllowInsecure() CredentialsOption {
	return func(c *credsConfig) { c.allowInsecure = true }
}

func newCredsConfig(opts []CredentialsOption) credsConfig {
	var c credsConfig
	for _, o := range opts {
		o(&c)
	}
	return c
}

// PerRPCCredentials returns credentials that put a token from ts on every
// call ("authorization: <type> <token>"), for grpc.WithPerRPCCredentials or
// grpc.PerRPCCredentials. They require transport security unless
// AllowInsecure is given.
//
// PerRPCCredentials cannot see how a call ends, so it cannot recover from a
// rejected token; UnaryClientInterceptor and StreamClientInterceptor can. Use
// one or the other on a connection, not both. A failure to get a token fails
// the call with the broker's status, except that gRPC turns codes it reserves
// for servers (such as FAILED_PRECONDITION or NOT_FOUND) into INTERNAL.
func PerRPCCredentials(ts *TokenSource, opts ...CredentialsOption) credentials.PerRPCCredentials {
	return &perRPC{ts: ts, allowInsecure: newCredsConfig(opts).allowInsecure}
}

type perRPC struct {
	ts            *TokenSource
	allowInsecure bool
}

func (c *perRPC) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if err := checkSecurity(ctx, c.allowInsecure); err != nil {
		return nil, err
	}
	tok, err := c.ts.TokenContext(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": tok.Type() + " " + tok.AccessToken}, nil
}

func (c *perRPC) RequireTransportSecurity() bool { return !c.allowInsecure }

// callToken is the credentials of one call: a fixed token, and whether it
// was handed to the transport (so a rejection can be blamed on it).
type callToken struct {
	tok           *oauth2.Token
	allowInsecure bool
	sent          atomic.Bool
}

func (c *callToken) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if err := checkSecurity(ctx, c.allowInsecure); err != nil {
		return nil, err
	}
	c.sent.Store(true)
	return map[string]string{"authorization": c.tok.Type() + " " + c.tok.AccessToken}, nil
}

func (c *callToken) RequireTransportSecurity() bool { return !c.allowInsecure }

// rejected reports whether err is the server refusing this token.
func (c *callToken) rejected(err error) bool {
	return err != nil && c.sent.Load() && status.Code(err) == codes.Unauthenticated
}

// withCreds returns opts plus creds, never writing into opts' array.
func withCreds(opts []grpc.CallOption, creds *callToken) []grpc.CallOption {
	return append(opts[:len(opts):len(opts)], grpc.PerRPCCredentials(creds))
}

// UnaryClientInterceptor returns an interceptor that puts a token from ts on
// each unary call ("authorization: <type> <token>"). When the call fails with
// codes.Unauthenticated after the token was sent, it reports exactly that
// token to the broker (TokenSource.Invalidate) and makes the call once more
// with the new token; a second Unauthenticated is returned as is. If the
// broker has no other token (it returned the rejected one, or refused the
// invalidation as rate-limited; see TokenSource.Invalidate), the call's own
// Unauthenticated error is returned, never the broker's; if the broker call
// fails otherwise (for example ErrReauthRequired), its error (an *Error)
// is.
//
// The token requires transport security unless AllowInsecure is given. Do
// not also set PerRPCCredentials on the connection.
func UnaryClientInterceptor(ts *TokenSource, opts ...CredentialsOption) grpc.UnaryClientInterceptor {
	cfg := newCredsConfig(opts)
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
		tok, err := ts.TokenContext(ctx)
		if err != nil {
			return err
		}
		creds := &callToken{tok: tok, allowInsecure: cfg.allowInsecure}
		err = invoker(ctx, method, req, reply, cc, withCreds(callOpts, creds)...)
		if !creds.rejected(err) {
			return err
		}
		next, ierr := ts.Invalidate(ctx, tok.AccessToken)
		if nothingNewer(next, ierr, tok.AccessToken) {
			return err
		}
		if ierr != nil {
			return ierr
		}
		creds = &callToken{tok: next, allowInsecure: cfg.allowInsecure}
		return invoker(ctx, method, req, reply, cc, withCreds(callOpts, creds)...)
	}
}

// StreamClientInterceptor returns an interceptor that puts a token from ts on
// each stream ("authorization: <type> <token>") and reports a rejected one.
//
// In gRPC a stream is opened without waiting for the server, so its verdict
// on the token arrives with the first RecvMsg. When a stream ends with
// codes.Unauthenticated after the token was sent, the interceptor reports
// exactly that token to the broker (TokenSource.Invalidate), so later calls
// use a new one. A server-streaming call (one request message, then
// responses) that fails so before any response is opened once more with the
// new token, if the broker returned a different one, and its request sent
// again, and the caller's RecvMsg continues on it; a second Unauthenticated
// is returned as is. If the broker has no other token (see
// TokenSource.Invalidate), the stream's own Unauthenticated error is
// returned, never the broker's; if the broker call fails otherwise, the
// server-streaming call gets that error (an *Error) instead.
// Client-streaming and bidirectional streams are not replayed, since their
// messages are not kept: they get the stream's error.
// Per the grpc.ClientStream contract, the caller must not modify a message
// after passing it to SendMsg.
//
// The token requires transport security unless AllowInsecure is given. Do
// not also set PerRPCCredentials on the connection.
func StreamClientInterceptor(ts *TokenSource, opts ...CredentialsOption) grpc.StreamClientInterceptor {
	cfg := newCredsConfig(opts)
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, callOpts ...grpc.CallOption) (grpc.ClientStream, error) {
		tok, err := ts.TokenContext(ctx)
		if err != nil {
			return nil, err
		}
		open := func(tok *oauth2.Token) (grpc.ClientStream, *callToken, error) {
			creds := &callToken{tok: tok, allowInsecure: cfg.allowInsecure}
			cs, err := streamer(ctx, desc, cc, method, withCreds(callOpts, creds)...)
			return cs, creds, err
		}
		cs, creds, err := open(tok)
		if err != nil {
			return nil, err
		}
		s := &authStream{
			cur:    cs,
			creds:  creds,
			replay: !desc.ClientStreams,
			open:   open,
			invalidate: func(rejected string) (*oauth2.Token, error) {
				return ts.Invalidate(ctx, rejected)
			},
		}
		return s, nil
	}
}

// authStream is a client stream that reports a rejected token and, for a
// server-streaming call, opens the stream again once with a new token.
type authStream struct {
	replay     bool // a server-streaming call: its one request can be sent again
	open       func(*oauth2.Token) (grpc.ClientStream, *callToken, error)
	invalidate func(rejected string) (*oauth2.Token, error)

	mu       sync.Mutex // guards the fields below
	cur      grpc.ClientStream
	creds    *callToken // the credentials cur was opened with
	req      any        // with replay: the request sent
	sends    int        // with replay: messages sent
	closed   bool       // with replay: CloseSend called
	received bool       // a response arrived on cur
	reported bool       // a rejection was handled; never twice
}

func (s *authStream) stream() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *authStream) Header() (md metadata.MD, err error) { return s.stream().Header() }
func (s *authStream) Trailer() metadata.MD                { return s.stream().Trailer() }
func (s *authStream) Context() context.Context            { return s.stream().Context() }

func (s *authStream) CloseSend() error {
	s.mu.Lock()
	s.closed = true
	cur := s.cur
	s.mu.Unlock()
	return cur.CloseSend()
}

func (s *authStream) SendMsg(m any) error {
	s.mu.Lock()
	if s.replay {
		s.req = m
		s.sends++
	}
	cur := s.cur
	s.mu.Unlock()
	return cur.SendMsg(m)
}

func (s *authStream) RecvMsg(m any) error {
	s.mu.Lock()
	cur, creds := s.cur, s.creds
	s.mu.Unlock()
	err := cur.RecvMsg(m)
	if err == nil {
		s.mu.Lock()
		s.received = true
		s.mu.Unlock()
		return nil
	}

	s.mu.Lock()
	if s.reported || !creds.rejected(err) {
		s.mu.Unlock()
		return err
	}
	s.reported = true
	replay := s.replay && !s.received && s.sends == 1 && s.closed
	req := s.req
	s.mu.Unlock()

	next, ierr := s.invalidate(creds.tok.AccessToken)
	if !replay || nothingNewer(next, ierr, creds.tok.AccessToken) {
		return err
	}
	if ierr != nil {
		return ierr
	}
	ns, ncreds, oerr := s.open(next)
	if oerr != nil {
		return oerr
	}
	// A failed SendMsg shows its real error on RecvMsg; CloseSend never fails.
	_ = ns.SendMsg(req)
	_ = ns.CloseSend()
	s.mu.Lock()
	s.cur, s.creds = ns, ncreds
	s.mu.Unlock()
	if err := ns.RecvMsg(m); err != nil {
		return err
	}
	s.mu.Lock()
	s.received = true
	s.mu.Unlock()
	return nil
}
