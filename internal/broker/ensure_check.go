package broker

import (
	"context"
	"errors"
)

// CheckEnsureCredential reports the error EnsureCredential(ctx, c,
// refreshToken) would fail with against the record as stored now, without
// writing anything (nil when it would succeed, as far as the arguments go).
// A caller that ensures several credentials checks them all first, so that
// a bad one stops the batch before any is written (--credentials-file).
// It mirrors the checks of put, which stays the authority.
func (b *Broker) CheckEnsureCredential(ctx context.Context, c Credential, refreshToken string) error {
	if err := b.admin(ctx); err != nil {
		return err
	}
	if err := validateCredential(&c, refreshToken, false); err != nil {
		return err
	}
	if err := b.cfg.TokenURLs.Check("credential.token_url", c.TokenURL); err != nil {
		return err
	}
	cur, err := b.store.Get(ctx, c.ID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return storeErr(c.ID, err)
	}
	if cur != nil && c.GrantType == cur.GrantType && sameOrigin(cur.TokenURL, c.TokenURL) {
		refreshToken = ""
	}
	if cur != nil && cur.Pending != nil && refreshToken == "" {
		return nil // EnsureCredential leaves the record alone
	}
	if err := validateCredential(&c, refreshToken, cur == nil || cur.GrantType != c.GrantType); err != nil {
		return err
	}
	return checkSecretsFollow(cur, &c, refreshToken)
}
