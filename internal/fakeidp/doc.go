// Package fakeidp is a strict RFC 6749 token endpoint for tests, benchmarks
// and the demo: the identity provider that tokenbroker is written against.
//
// A Server issues token families. Seed starts one (a refresh token for a
// client and its scopes); each grant_type=refresh_token request on a live
// refresh token extends it. How a refresh answers is switchable at run time:
//
//   - Rotation: Rotate (a new refresh token each time, the presented one is
//     spent), NoRotation (the same refresh token comes back) or
//     OmitRefreshToken (no refresh_token field; the presented one stays valid,
//     as RFC 6749 section 6 allows).
//   - ReusePolicy, for a spent refresh token presented again: RevokeFamily
//     (invalid_grant, and the family's refresh tokens and every access token
//     it issued die, as Auth0, Okta and Ory Hydra do), DexInvalidRequest (400
//     invalid_request "already been claimed", as Dex answers, revoking
//     nothing), or a grace window (SetGraceWindow) within which a replay of
//     the token just spent is accepted: with the same successor pair (Grace,
//     else RevokeFamily; DexReuseInterval, Dex's reuseInterval, else
//     DexInvalidRequest) or with a new pair each time (GraceNewPair: Okta's
//     grace period, Auth0's reuse interval, Hydra's rotation_grace_period,
//     else RevokeFamily).
//   - RevokePreviousAccessToken: each refresh revokes the family's earlier
//     access tokens at once, as Ory Hydra v2 and Salesforce do.
//
// grant_type=client_credentials is served too. Clients authenticate by HTTP
// basic (RFC 6749 section 2.3.1: id and secret form-urlencoded before base64,
// as golang.org/x/oauth2 sends them) or by client_id and client_secret in the
// body, never both; a client registered with the empty secret is public and
// may identify itself by client_id alone. A client may have several accepted
// secrets at once, so secret rotation can be tested.
//
// Fault knobs (Latency, FailNext, RateLimitNext, LoseReplyNext and a seeded
// failure rate) make the endpoint misbehave on demand. Pause and StallNext
// freeze token requests until Resume (WaitStall tells when they are held and
// when their clients have given up). A request whose client goes away while
// it waits is still processed, rotation included, as real servers do, unless
// DropAbandoned is set. Counters (Stats, and
// FamilyStats per token family, which tells spent-token presentations that a
// grace window accepted from those refused) and an optional per-request hook
// (Options.OnEvent) show what happened; Lookup tells which family and
// generation a token belongs to and whether it is still live.
//
// Every knob can be set in Options and changed at run time, concurrently with
// requests. Expiry and grace windows follow Options.Now, so tests can run on a
// fake clock.
//
// The protected resource at /resource answers 200 to a live, unexpired access
// token and 401 with a Bearer challenge (RFC 6750 section 3) otherwise.
//
// expires_in is integer seconds on the wire. A Server accepts sub-second
// access-token lifetimes for fast tests: expires_in is then rounded up (to at
// least 1), while /resource enforces the exact lifetime. Note that
// golang.org/x/oauth2 treats a token as expired 10 seconds before its
// expiry, so with short lifetimes its TokenSource refreshes on every call.
//
// A Server logs nothing and never puts a token or secret into an error
// description. It holds every token it issued in memory for its lifetime; it
// is meant for tests and demos, not for production. Many Servers can run in
// one process; there is no global state.
package fakeidp
