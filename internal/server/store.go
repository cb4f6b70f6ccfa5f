package server

import (
	"context"
	"errors"
	"time"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	"github.com/tokenbroker/tokenbroker/internal/redisstore"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// pingTimeout bounds the check at start that Redis answers.
const pingTimeout = 5 * time.Second

// openStore returns the broker's Store: in memory in dev mode, else in
// Redis. What it opens is added to s.closers.
func (s *Server) openStore(ctx context.Context) (broker.Store, error) {
	if s.cfg.DevMode() {
		s.warnDevMode()
		s.health.storeUp.Store(true)
		return memstore.New(), nil
	}
	if !s.cfg.Authenticated() {
		s.log.Warn("no caller authentication (--allow-unauthenticated): every caller may read every credential and call the admin methods")
	}
	return s.openRedis(ctx)
}

func (s *Server) warnDevMode() {
	if s.cfg.Authenticated() {
		s.log.Warn("dev mode: single replica, in-memory store (nothing is kept across restarts); set --redis-url for production")
	} else {
		s.log.Warn("dev mode: single replica, in-memory store (nothing is kept across restarts), no authentication; set --redis-url for production")
	}
	if s.cfg.SealKeys != "" {
		s.log.Info("--seal-keys unused in dev mode: nothing is stored outside the process")
	}
}

// openRedis returns a redisstore.Store on a new go-redis client. A Redis
// that does not answer at start is only logged: calls fail with
// UNAVAILABLE until it does, and the server recovers without a restart.
func (s *Server) openRedis(ctx context.Context) (broker.Store, error) {
	client, err := redisstore.NewClient(s.cfg.RedisURL)
	if err != nil {
		return nil, badConfig("--redis-url: %v", err)
	}
	s.closers = append(s.closers, client.Close)
	if s.cfg.RedisHook != nil {
		client.AddHook(s.cfg.RedisHook)
	}
	opts, err := s.redisOptions()
	if err != nil {
		return nil, err
	}
	store, err := redisstore.New(client, opts)
	if err != nil {
		return nil, badConfig("%v", err)
	}
	s.closers = append(s.closers, store.Close)

	s.redis = client
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	err = redisstore.Preflight(pctx, client, s.cfg.RedisURL)
	if errors.Is(err, redisstore.ErrMisconfigured) {
		return nil, badConfig("%v", err)
	}
	if err == nil {
		err = checkKeyring(pctx, store, &s.cfg)
		var ce *ConfigError
		if errors.As(err, &ce) {
			return nil, err
		}
	}
	if err != nil {
		// Not fatal: the replica starts NOT_SERVING and the store monitor
		// finishes the checks (and the seeding) once Redis answers.
		s.log.Warn("redis does not answer; calls fail with UNAVAILABLE and readiness is NOT_SERVING until it does",
			"error", redisstore.RedactURL(err.Error(), s.cfg.RedisURL))
		return store, nil
	}
	s.health.storeUp.Store(true)
	return store, nil
}

// redisOptions returns the Store's options, with the keyring of SealKeys.
func (s *Server) redisOptions() (redisstore.Options, error) {
	opts := redisstore.Options{Prefix: s.cfg.RedisPrefix, AllowPlaintext: s.cfg.AllowPlaintext}
	acks, err := s.cfg.minReplicaAcks()
	if err != nil {
		return opts, err
	}
	opts.MinReplicaAcks = acks
	if s.cfg.SealKeys == "" {
		s.log.Warn("redis mode without --seal-keys: refresh tokens and client secrets are stored unencrypted")
		return opts, nil
	}
	if opts.Keyring, err = seal.ParseKeyring(s.cfg.SealKeys); err != nil {
		return opts, badConfig("--seal-keys: %v", err)
	}
	return opts, nil
}
