package redisstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/seal"
)

// Authorization code flows live under
//
//	tokenbroker:flow:<sha256 hex of the state>   string: the broker.CodeFlow
//
// as JSON, sealed like the records (with "flow:<hex>" as additional data)
// when a keyring is configured, with the flow's TTL. Redis never holds the
// state itself, only its hash, so reading the keys does not let anyone
// complete a flow; the code verifier is sealed.

func (s *Store) flowKey(state string) (key, aad string) {
	sum := sha256.Sum256([]byte(state))
	h := hex.EncodeToString(sum[:])
	return s.prefix + ":flow:" + h, "flow:" + h
}

// SaveFlow keeps f under state for ttl (SET NX PX), or returns
// broker.ErrConflict when the state is taken.
func (s *Store) SaveFlow(ctx context.Context, state string, f *broker.CodeFlow, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("redisstore: flow ttl %v is below 1ms", ttl)
	}
	key, aad := s.flowKey(state)
	data, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("redisstore: encode flow: %w", err)
	}
	if s.keyring != nil {
		if data, err = s.keyring.Seal(data, []byte(aad)); err != nil {
			return fmt.Errorf("redisstore: seal flow: %w", err)
		}
	}
	ok, err := s.client.SetNX(ctx, key, data, ttl).Result()
	if err != nil {
		return fmt.Errorf("redisstore: save flow: %w", err)
	}
	if !ok {
		return broker.ErrConflict
	}
	return nil
}

// TakeFlow returns the flow kept under state and deletes it in one command
// (GETDEL), or broker.ErrNotFound.
func (s *Store) TakeFlow(ctx context.Context, state string) (*broker.CodeFlow, error) {
	key, aad := s.flowKey(state)
	data, err := s.client.GetDel(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, broker.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: take flow: %w", err)
	}
	if seal.IsSealed(data) {
		if s.keyring == nil {
			return nil, fmt.Errorf("redisstore: flow sealed, and no keyring is configured: %w", broker.ErrUnreadable)
		}
		if data, _, err = s.keyring.Open(data, []byte(aad)); err != nil {
			return nil, fmt.Errorf("redisstore: flow: %w: %w", err, broker.ErrUnreadable)
		}
	}
	f := new(broker.CodeFlow)
	if err := json.Unmarshal(data, f); err != nil {
		return nil, fmt.Errorf("redisstore: flow is not valid JSON: %w", broker.ErrUnreadable)
	}
	return f, nil
}
