package server

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
)

// The --http-addr listener: GET /oauth2/callback, where the IdP sends the
// browser back after StartAuthorization (on whatever replica the load
// balancer picks: the flow is in the Store). It answers a small page:
// "connected: <id>" or what went wrong, with the HTTP status that says it.
// Neither the page nor the log line holds the code, the state or anything
// else from the query but the IdP's error code and its cleaned description.

// callbackExtra bounds one callback beyond the broker's own bounds (lease
// wait, IdP call).
const callbackExtra = 5 * time.Second

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>tokenbroker: {{.Title}}</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>{{.Title}}</h1>
<p>{{.Message}}</p>
</body></html>
`))

type callbackView struct {
	Title   string
	Message string
}

// callbackHandler serves CallbackPath for b.
func callbackHandler(b *broker.Broker, cfg *Config, log *slog.Logger) http.Handler {
	wait := lockWaitOf(cfg) + cfg.RefreshTimeout + callbackExtra
	mux := http.NewServeMux()
	mux.HandleFunc(broker.CallbackPath, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer") // the URL holds the code
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		if r.Method != http.MethodGet {
			h.Set("Allow", http.MethodGet)
			writePage(w, http.StatusMethodNotAllowed, callbackView{"method not allowed", "The callback answers GET only."})
			return
		}
		q := r.URL.Query()
		// The exchange and the store go on if the browser goes away: the
		// state is spent either way.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), wait)
		defer cancel()
		start := time.Now()
		rec, err := b.CompleteAuthorization(ctx, q.Get("state"), q.Get("code"), q.Get("error"), q.Get("error_description"))
		status, view := callbackOutcome(rec, err)
		writePage(w, status, view)
		attrs := []slog.Attr{slog.Int("status", status), slog.Duration("duration", time.Since(start))}
		var be *broker.Error
		if errors.As(err, &be) && be.CredentialID != "" {
			attrs = append(attrs, slog.String("credential_id", be.CredentialID))
		}
		if rec != nil {
			attrs = append(attrs, slog.String("credential_id", rec.ID), slog.Uint64("generation", rec.Generation))
		}
		level := slog.LevelInfo
		if err != nil {
			level = slog.LevelWarn
			attrs = append(attrs, slog.String("error", err.Error())) // broker errors hold no secret
		}
		log.LogAttrs(r.Context(), level, "authorization callback", attrs...)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writePage(w, http.StatusNotFound, callbackView{"not found", "This listener serves " + broker.CallbackPath + " only."})
	})
	return mux
}

// lockWaitOf is the broker's lock wait with its defaults.
func lockWaitOf(cfg *Config) time.Duration {
	if cfg.LockWait > 0 {
		return cfg.LockWait
	}
	ttl := cfg.LockTTL
	if ttl == 0 {
		ttl = cfg.RefreshTimeout + 5*time.Second
	}
	return ttl + 5*time.Second
}

// callbackOutcome is the status and page of a callback's outcome.
func callbackOutcome(rec *broker.Record, err error) (int, callbackView) {
	if err == nil {
		return http.StatusOK, callbackView{"connected: " + rec.ID, "connected: " + rec.ID + "; you may close this window."}
	}
	msg := err.Error()
	switch {
	case errors.Is(err, broker.ErrInvalidArgument):
		return http.StatusBadRequest, callbackView{"authorization link expired or invalid", msg}
	case errors.Is(err, broker.ErrPermissionDenied):
		return http.StatusForbidden, callbackView{"authorization denied", msg}
	case errors.Is(err, broker.ErrNotFound):
		return http.StatusNotFound, callbackView{"credential not found", msg}
	case errors.Is(err, broker.ErrIdPRejected), errors.Is(err, broker.ErrIdPUnavailable):
		return http.StatusBadGateway, callbackView{"authorization failed at the identity provider", msg + " Start the authorization again."}
	case errors.Is(err, broker.ErrStoreUnavailable), errors.Is(err, broker.ErrLockTimeout), errors.Is(err, broker.ErrShuttingDown):
		return http.StatusServiceUnavailable, callbackView{"the broker is unavailable", msg + " Start the authorization again."}
	}
	return http.StatusInternalServerError, callbackView{"internal error", "The authorization could not be completed; the broker's log says why. Start the authorization again."}
}

func writePage(w http.ResponseWriter, status int, v callbackView) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = callbackPage.Execute(w, v)
}
