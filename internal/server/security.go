package server

import (
	"crypto/tls"
	"log/slog"

	"github.com/tokenbroker/tokenbroker/internal/auth"
)

// security is how the gRPC port checks its callers: nil fields are off.
type security struct {
	authn *auth.Authenticator
	tls   *tls.Config
}

// loadSecurity reads the client registry and the TLS files of a valid cfg;
// a file that does not read or parse is bad configuration. It warns where
// the set-up leaves callers or keys exposed.
func loadSecurity(cfg *Config, log *slog.Logger) (*security, error) {
	sec := &security{authn: cfg.Authenticator}
	if cfg.ClientsFile != "" {
		var err error
		if sec.authn, err = loadClients(cfg.ClientsFile, log); err != nil {
			return nil, err
		}
	}
	if cfg.TLS() {
		var err error
		if sec.tls, err = auth.ServerTLS(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, cfg.TLSRequireClientCert); err != nil {
			return nil, badConfig("%v", err) // names files, never key material
		}
	}
	if cfg.Authenticated() && !cfg.TLS() && !loopback(cfg.GRPCAddr) {
		log.Warn("bearer keys cross the network in plaintext: --grpc-addr is not a loopback address and --tls-cert is not set")
	}
	return sec, nil
}

// loadClients reads the client registry file at path.
func loadClients(path string, log *slog.Logger) (*auth.Authenticator, error) {
	clients, err := auth.LoadClients(path)
	if err != nil {
		return nil, badConfig("--clients-file: %v", err) // auth's errors never quote a key hash
	}
	authn, err := auth.NewAuthenticator(clients)
	if err != nil {
		return nil, badConfig("--clients-file: %v", err)
	}
	admins := 0
	for _, c := range clients {
		if c.Admin {
			admins++
		}
	}
	log.Info("client registry loaded", "file", path, "clients", len(clients), "admins", admins)
	if len(clients) == 0 {
		log.Warn("the client registry is empty: every call but health and reflection fails with UNAUTHENTICATED")
	}
	return authn, nil
}
