// Package clientsdk is the client side of tokenbroker: it gets a
// credential's access tokens from the broker and puts them on outgoing HTTP
// and gRPC calls.
//
// Dial (or New, over a connection you own) gives a Client; its TokenSource
// method gives an oauth2.TokenSource per credential, with a local cache that
// hands out a token until shortly before it expires, and one broker call at
// a time however many goroutines ask. On top of a TokenSource:
//
//   - Transport, an http.RoundTripper that sets Authorization and, when the
//     resource server answers 401, reports the rejected token to the broker
//     and retries once with a new one, if the broker has one (otherwise,
//     also when it is rate-limited, the caller gets the 401);
//   - PerRPCCredentials, and UnaryClientInterceptor and
//     StreamClientInterceptor, which do the same for gRPC calls to other
//     services on codes.Unauthenticated.
//
// Each TokenSource also follows its credential over the broker's WatchToken
// stream (one per credential per Client), so its cache holds every new
// token the moment the broker stores it, before the old one dies, and falls
// back on unary GetToken calls whenever the stream is down or the broker
// does not offer it. WithoutWatch and WithWatch turn that off.
//
// Failed broker calls return an *Error, which matches the package's sentinel
// errors (ErrReauthRequired, ErrRefreshOutcomeUnknown, ErrCredentialNotFound,
// ErrPermissionDenied, ErrUnavailable, ...) with errors.Is and keeps the
// gRPC status.
//
// Tokens are secrets: this package never puts one in an error message.
package clientsdk
