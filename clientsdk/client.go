package clientsdk

import (
	"context"
	"crypto/tls"
	"errors"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Client talks to the broker's TokenService. It is safe for concurrent use;
// make one per broker and share it, with one TokenSource per credential.
type Client struct {
	tc      tbv1.TokenServiceClient
	conn    *grpc.ClientConn // set when Dial made it; closed by Close
	watches *watches         // WatchToken streams by credential (watch.go)
}

// New returns a Client that calls the broker over cc, watching the
// credentials its TokenSources use (see WithWatch). The caller keeps owning
// cc: Close ends the watch streams but does not close it.
func New(cc grpc.ClientConnInterface) *Client {
	return &Client{tc: tbv1.NewTokenServiceClient(cc), watches: newWatches(false)}
}

// serviceConfig is Dial's default gRPC service config: round-robin over the
// broker replicas the target resolves to, and gRPC's own retries (with
// exponential backoff and jitter) of TokenService calls that fail with
// UNAVAILABLE. Both TokenService methods are safe to repeat.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "tokenbroker.v1.TokenService"}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// defaultKeepalive: a ping after 30s without traffic while calls are in
// flight, and the connection is dropped if the ping is not answered within
// 10s, so a broker replica that vanished (kill -9, lost network) is noticed.
var defaultKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// DialOption configures Dial.
type DialOption func(*dialConfig)

type dialConfig struct {
	tls       *tls.Config
	tlsSet    bool
	insecure  bool
	apiKey    string
	apiKeySet bool
	keepalive keepalive.ClientParameters
	noWatch   bool
	extra     []grpc.DialOption
}

// WithTLS connects over TLS with cfg (nil: the system's roots and defaults).
// This is the default. For mutual TLS, put the client certificate in cfg.
func WithTLS(cfg *tls.Config) DialOption {
	return func(c *dialConfig) { c.tls, c.tlsSet = cfg, true }
}

// WithInsecure connects without transport security, for local development
// and tests. The API key, if any, then travels in clear text.
func WithInsecure() DialOption {
	return func(c *dialConfig) { c.insecure = true }
}

// WithAPIKey authenticates every call to the broker with the bearer key
// ("authorization: Bearer <key>"). The key is only sent over a secure
// connection unless WithInsecure was given too.
func WithAPIKey(key string) DialOption {
	return func(c *dialConfig) { c.apiKey, c.apiKeySet = key, true }
}

// WithKeepalive replaces Dial's keepalive parameters (see Dial).
func WithKeepalive(p keepalive.ClientParameters) DialOption {
	return func(c *dialConfig) { c.keepalive = p }
}

// WithDialOptions appends grpc.DialOptions after Dial's own, so they win
// where they overlap (for example grpc.WithContextDialer, or a different
// grpc.WithDefaultServiceConfig).
func WithDialOptions(opts ...grpc.DialOption) DialOption {
	return func(c *dialConfig) { c.extra = append(c.extra, opts...) }
}

// Dial returns a Client for the broker at target (a gRPC target such as
// "dns:///broker.internal:7070" or "127.0.0.1:7070") with a connection it
// owns; Close it when done. Without options it uses TLS with the system's
// roots; plain text needs WithInsecure. It sets a service config that
// balances over the resolved replicas and retries UNAVAILABLE with
// exponential backoff (at most 5 attempts, backoff 0.1s doubling up to 2s),
// and keepalive pings after 30s without traffic while calls are in flight,
// dropping the connection when a ping goes unanswered for 10s, so a replica
// that vanished is noticed. The broker must permit pings that often
// (keepalive.EnforcementPolicy.MinTime of 30s or less); a server that
// answers GOAWAY "too_many_pings" makes grpc-go double the interval.
//
// TokenSources watch their credentials over TokenService/WatchToken (one
// stream per credential, shared by the Client's TokenSources of it), so that
// their caches are replaced the moment the broker stores a new token; see
// WithoutWatch and WithWatch to turn that off.
//
// Dial does not connect: the first call does, and connection errors show up
// there.
func Dial(target string, opts ...DialOption) (*Client, error) {
	cfg := dialConfig{keepalive: defaultKeepalive}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.insecure && cfg.tlsSet {
		return nil, errors.New("clientsdk: WithInsecure and WithTLS both given")
	}
	if cfg.apiKeySet && cfg.apiKey == "" {
		return nil, errors.New("clientsdk: WithAPIKey given an empty key")
	}
	tc := insecure.NewCredentials()
	if !cfg.insecure {
		tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.tls != nil {
			tlsCfg = cfg.tls.Clone()
		}
		tc = credentials.NewTLS(tlsCfg)
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(tc),
		grpc.WithKeepaliveParams(cfg.keepalive),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithUserAgent("tokenbroker-clientsdk"),
		// OpenTelemetry: a client span per broker call, with the W3C trace
		// context sent along, through the process's global TracerProvider
		// and propagator (no-ops until the application sets them).
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
	}
	if cfg.apiKeySet {
		dopts = append(dopts, grpc.WithPerRPCCredentials(apiKey{
			md:            "Bearer " + cfg.apiKey,
			allowInsecure: cfg.insecure,
		}))
	}
	dopts = append(dopts, cfg.extra...)
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, err
	}
	return &Client{tc: tbv1.NewTokenServiceClient(conn), conn: conn, watches: newWatches(cfg.noWatch)}, nil
}

// Close ends the Client's watch streams and closes the connection Dial made
// (a Client made with New leaves its connection open). Its TokenSources keep
// their cached tokens but cannot reach the broker any more.
func (c *Client) Close() error {
	if c.watches != nil {
		c.watches.close()
	}
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// getToken calls GetToken; failures are *Error.
func (c *Client) getToken(ctx context.Context, id string, minValid time.Duration) (*oauth2.Token, error) {
	req := &tbv1.GetTokenRequest{CredentialId: id}
	if minValid > 0 {
		req.MinValid = durationpb.New(minValid)
	}
	resp, err := c.tc.GetToken(ctx, req)
	if err != nil {
		return nil, toError(err)
	}
	return newToken(resp.GetAccessToken(), resp.GetTokenType(), resp.GetExpiresAt())
}

// invalidateToken calls InvalidateToken; failures are *Error.
func (c *Client) invalidateToken(ctx context.Context, id, rejected string, minValid time.Duration) (*oauth2.Token, error) {
	req := &tbv1.InvalidateTokenRequest{CredentialId: id, RejectedAccessToken: rejected}
	if minValid > 0 {
		req.MinValid = durationpb.New(minValid)
	}
	resp, err := c.tc.InvalidateToken(ctx, req)
	if err != nil {
		return nil, toError(err)
	}
	return newToken(resp.GetAccessToken(), resp.GetTokenType(), resp.GetExpiresAt())
}

func newToken(access, typ string, exp *timestamppb.Timestamp) (*oauth2.Token, error) {
	if access == "" {
		return nil, errors.New("clientsdk: broker returned an empty access token")
	}
	t := &oauth2.Token{AccessToken: access, TokenType: typ}
	if exp != nil {
		t.Expiry = exp.AsTime()
	}
	return t, nil
}

// apiKey authenticates calls to the broker with a bearer key.
type apiKey struct {
	md            string // "Bearer <key>"; secret
	allowInsecure bool
}

func (k apiKey) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if err := checkSecurity(ctx, k.allowInsecure); err != nil {
		return nil, err
	}
	return map[string]string{"authorization": k.md}, nil
}

func (k apiKey) RequireTransportSecurity() bool { return !k.allowInsecure }

// checkSecurity fails unless the connection has privacy and integrity or
// insecure connections are allowed.
func checkSecurity(ctx context.Context, allowInsecure bool) error {
	if allowInsecure {
		return nil
	}
	ri, _ := credentials.RequestInfoFromContext(ctx)
	if err := credentials.CheckSecurityLevel(ri.AuthInfo, credentials.PrivacyAndIntegrity); err != nil {
		return errors.New("clientsdk: refusing to send a bearer credential over a connection without transport security")
	}
	return nil
}
