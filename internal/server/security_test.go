package server

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tokenbroker/tokenbroker/internal/auth"
	"github.com/tokenbroker/tokenbroker/internal/auth/authtest"
)

// writeClients writes a client registry with one admin ("ops") and one
// reader ("reader") and returns its path and the two keys.
func writeClients(t *testing.T, dir string) (path, adminKey, readerKey string) {
	t.Helper()
	adminKey, adminHash, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	readerKey, readerHash, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "clients.json")
	data := fmt.Sprintf(`{"clients": [{"id": "ops", "key_sha256": %q, "admin": true}, {"id": "reader", "key_sha256": [%q]}]}`, adminHash, readerHash)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, adminKey, readerKey
}

// TestLoadSecurity: the registry and TLS files are read at start; keys over
// plaintext on a non-loopback address get a warning. (What does not read or
// parse is refused: cmd/broker's TestBadSecurityFiles.)
func TestLoadSecurity(t *testing.T) {
	dir := t.TempDir()
	clients, _, _ := writeClients(t, dir)
	ca, err := authtest.NewCA("config test CA")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := srv.Write(dir, "server")
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := ca.WriteCert(dir, "ca.crt")
	if err != nil {
		t.Fatal(err)
	}

	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	cfg := func(edit func(*Config)) *Config {
		t.Helper()
		c := DefaultConfig()
		edit(&c)
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		return &c
	}

	sec, err := loadSecurity(cfg(func(c *Config) {
		c.ClientsFile, c.TLSCert, c.TLSKey, c.TLSClientCA = clients, certFile, keyFile, caFile
	}), log)
	if err != nil || sec.authn == nil || sec.tls == nil || sec.tls.ClientCAs == nil {
		t.Fatalf("loadSecurity = %+v, %v", sec, err)
	}
	if strings.Contains(logs.String(), "plaintext") {
		t.Errorf("TLS on, yet a plaintext warning:\n%s", logs.String())
	}
	if sec, err := loadSecurity(cfg(func(*Config) {}), log); err != nil || sec.authn != nil || sec.tls != nil {
		t.Errorf("open plaintext = %+v, %v", sec, err)
	}

	logs.Reset()
	if _, err := loadSecurity(cfg(func(c *Config) { c.ClientsFile, c.GRPCAddr = clients, "0.0.0.0:7070" }), log); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "bearer keys cross the network in plaintext"); n != 1 {
		t.Errorf("%d plaintext warnings for keys on 0.0.0.0 without TLS; want 1:\n%s", n, logs.String())
	}
	logs.Reset()
	if _, err := loadSecurity(cfg(func(c *Config) { c.ClientsFile = clients }), log); err != nil || strings.Contains(logs.String(), "plaintext") {
		t.Errorf("keys on loopback without TLS: %v, warned:\n%s", err, logs.String())
	}

	// A registry held in memory is used as it is, and warned about the same.
	a, err := auth.NewAuthenticator(nil)
	if err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	sec, err = loadSecurity(cfg(func(c *Config) { c.Authenticator, c.GRPCAddr = a, ":7070" }), log)
	if err != nil || sec.authn != a {
		t.Errorf("in-memory registry = %+v, %v", sec, err)
	}
	if !strings.Contains(logs.String(), "bearer keys cross the network in plaintext") {
		t.Errorf("no plaintext warning for an in-memory registry on every interface:\n%s", logs.String())
	}
}

func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7070": true, "127.1.2.3:0": true, "[::1]:7070": true, "localhost:7070": true, "LOCALHOST:1": true,
		":7070": false, "0.0.0.0:7070": false, "[::]:7070": false, "10.0.0.5:7070": false, "broker.internal:7070": false, "nonsense": false,
	} {
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%q) = %v; want %v", addr, got, want)
		}
	}
}
