package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrTLSConfig is matched (errors.Is) by every error of ServerTLS about its
// inputs: unreadable or invalid files, inconsistent settings.
var ErrTLSConfig = errors.New("auth: invalid TLS configuration")

// ServerTLS returns the TLS configuration of the gRPC port: TLS 1.2 or later
// with the certificate and key in the PEM files certFile and keyFile.
//
// With clientCAFile (PEM, one or more CA certificates), client certificates
// are verified against those CAs: required when requireClientCert is set,
// verified if presented otherwise (so bearer-key clients without a
// certificate still connect). A client certificate that does not verify
// fails the handshake. requireClientCert without clientCAFile is an error.
//
// The files are read once; restart (or rebuild the configuration) to rotate
// them.
func ServerTLS(certFile, keyFile, clientCAFile string, requireClientCert bool) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("%w: a certificate file and a key file are both required", ErrTLSConfig)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		// The error of LoadX509KeyPair names files and PEM block types,
		// never key material.
		return nil, fmt.Errorf("%w: server certificate: %w", ErrTLSConfig, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.NoClientCert,
	}
	switch {
	case clientCAFile != "":
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: client CA: %w", ErrTLSConfig, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: client CA: no PEM certificate in %s", ErrTLSConfig, clientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if requireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	case requireClientCert:
		return nil, fmt.Errorf("%w: requiring client certificates needs a client CA file", ErrTLSConfig)
	}
	return cfg, nil
}
