package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"time"
)

// Page sizes of ListCredentials.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// PutCredential creates a credential or replaces an existing one. On an
// existing credential, an empty refreshToken keeps the stored refresh token
// and token state, and no client secrets keeps the stored ones; a non-empty
// refreshToken re-seeds the credential: the access token is dropped and the
// state returns to ACTIVE. It waits for a refresh in flight to finish, and
// without a new refresh token refuses (ErrLockTimeout) while a refresh's
// outcome is still to be stored, so it never discards a refresh token the
// IdP just issued.
func (b *Broker) PutCredential(ctx context.Context, c Credential, refreshToken string) (*Record, error) {
	return b.put(ctx, c, refreshToken, false)
}

// ReplaceCredential is PutCredential as the API serves it: a whole
// replace that refuses (ErrInvalidArgument, field
// credential.allowed_clients) to leave an existing credential that has
// allowed clients with none, unless clearAllowedClients says so, so that a
// request that merely forgot the field does not cut every reader off.
func (b *Broker) ReplaceCredential(ctx context.Context, c Credential, refreshToken string, clearAllowedClients bool) (*Record, error) {
	return b.write(ctx, c.ID, func(cur *Record) (Credential, string, error) {
		if cur != nil && len(cur.AllowedClients) > 0 && len(c.AllowedClients) == 0 && !clearAllowedClients {
			return c, refreshToken, &Error{Kind: ErrInvalidArgument, Field: "credential.allowed_clients", CredentialID: c.ID,
				Detail: "the put would remove every allowed client of the existing credential: send them (a put replaces the whole credential), change other fields with UpdateCredential, or set clear_allowed_clients"}
		}
		return c, refreshToken, nil
	}, false)
}

// UpdateCredential changes an existing credential: edit gets its
// configuration (secrets included; it must not hand them out) and returns
// the new one and, to re-seed the credential, a new refresh token (empty
// keeps the stored one). It runs under the credential's lease, so it sees
// the latest record, and what it returns is checked and stored as
// PutCredential's would be. A missing credential is ErrNotFound.
func (b *Broker) UpdateCredential(ctx context.Context, id string, edit func(cur Credential) (Credential, string, error)) (*Record, error) {
	return b.write(ctx, id, func(cur *Record) (Credential, string, error) {
		if cur == nil {
			return Credential{}, "", &Error{Kind: ErrNotFound, CredentialID: id}
		}
		// The stored secrets stay out of edit's hands: what it returns
		// without secrets keeps them (and so cannot carry them to a new
		// token URL host; see checkSecretsFollow).
		c := cur.Clone().Credential
		c.ClientSecrets = nil
		return edit(c)
	}, false)
}

// EnsureCredential is PutCredential for configuration loaded at start by
// every replica: refreshToken seeds the credential only if it does not exist
// yet (decided under its lease), so a restart never writes an already spent
// refresh token over the rotated one. An existing credential gets the new
// configuration and keeps its refresh token and state.
func (b *Broker) EnsureCredential(ctx context.Context, c Credential, refreshToken string) (*Record, error) {
	return b.put(ctx, c, refreshToken, true)
}

func (b *Broker) put(ctx context.Context, c Credential, refreshToken string, seedOnly bool) (*Record, error) {
	return b.write(ctx, c.ID, func(*Record) (Credential, string, error) { return c, refreshToken, nil }, seedOnly)
}

// write puts the credential that edit makes of the stored record (nil for
// a credential that does not exist yet), under the credential's lease.
func (b *Broker) write(ctx context.Context, id string, edit func(cur *Record) (Credential, string, error), seedOnly bool) (*Record, error) {
	if err := b.admin(ctx); err != nil {
		return nil, err
	}
	if err := ValidateID("credential.id", id); err != nil {
		return nil, err
	}
	if c, refreshToken, err := edit(nil); err == nil {
		// What can be checked before the lease is checked before it.
		if err := validateCredential(&c, refreshToken, false); err != nil {
			return nil, err
		}
		if err := b.cfg.TokenURLs.Check("credential.token_url", c.TokenURL); err != nil {
			return nil, err
		}
	}
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return nil, err
	}
	defer b.release(ctx, lease)
	cur, err := b.store.Get(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, storeErr(id, err)
	}
	c, refreshToken, err := edit(cur)
	if err != nil {
		return nil, err
	}
	if c.ID != id {
		return nil, invalidArg("credential.id", "cannot be changed")
	}
	if err := validateCredential(&c, refreshToken, false); err != nil {
		return nil, err
	}
	if err := b.cfg.TokenURLs.Check("credential.token_url", c.TokenURL); err != nil {
		return nil, err
	}
	if seedOnly && cur != nil && c.GrantType == cur.GrantType && sameOrigin(cur.TokenURL, c.TokenURL) {
		refreshToken = "" // the file's refresh token was spent long ago
	}
	if cur != nil && cur.Pending != nil && refreshToken == "" {
		// A refresh's outcome is on its way to the record: a write now
		// would discard it. A new refresh token overrides it (the operator
		// re-seeds); anything else waits for it.
		if seedOnly {
			return cur, nil // the file's configuration applies at the next start
		}
		return nil, &Error{Kind: ErrLockTimeout, CredentialID: c.ID, RetryAfter: b.cfg.PollInterval,
			Detail: "a refresh of the credential is being stored; try again"}
	}
	if err := validateCredential(&c, refreshToken, cur == nil || cur.GrantType != c.GrantType); err != nil {
		return nil, err
	}
	if err := checkSecretsFollow(cur, &c, refreshToken); err != nil {
		return nil, err
	}
	now := time.Now()
	var next *Record
	if cur == nil {
		next = &Record{State: StateActive, CreatedAt: now}
	} else {
		next = cur.Clone()
		if len(c.ClientSecrets) == 0 {
			c.ClientSecrets = next.ClientSecrets
		}
		if c.GrantType != cur.GrantType {
			next.Token = Token{}
		}
	}
	next.Credential = c
	next.UpdatedAt = now
	if cur == nil || refreshToken != "" || c.GrantType != cur.GrantType {
		next.RefreshToken = refreshToken
		next.Token = Token{}
		next.State = StateActive
		next.LastError, next.LastErrorAt = "", time.Time{}
		next.Failures, next.NextAttemptAt = 0, time.Time{}
		next.OutcomeUnknown = false
		next.Authorization = nil
		if refreshToken == "" && c.GrantType == GrantRefreshToken {
			// Created (or switched to the refresh_token grant) to be
			// authorized by the broker's own flows.
			next.State = StateReauthRequired
			next.LastError, next.LastErrorAt = "not authorized yet: run StartAuthorization or StartDeviceAuthorization", now
		}
	}
	stored, err := b.commit(ctx, lease, next)
	if err != nil {
		return nil, err
	}
	caller, _ := CallerFrom(ctx)
	switch {
	case cur == nil:
		b.changed(ChangeCreated, nil, stored, caller.ID, "created")
	case refreshToken != "":
		b.changed(ChangeReseeded, cur, stored, caller.ID, "a new refresh token was put")
	default:
		b.changed("", cur, stored, caller.ID, "")
	}
	return stored, nil
}

// checkSecretsFollow refuses a change of an existing credential's token
// endpoint to another scheme or host that keeps the stored secrets: they
// would be sent to whatever the new URL names. Such a change must bring
// the client secret (if the credential has one) and, with the
// refresh_token grant, the refresh token.
func checkSecretsFollow(cur *Record, c *Credential, refreshToken string) error {
	if cur == nil || sameOrigin(cur.TokenURL, c.TokenURL) {
		return nil
	}
	if len(cur.ClientSecrets) > 0 && len(c.ClientSecrets) == 0 {
		return invalidArg("credential.client_secret", "required when token_url moves to another scheme or host: the stored secret is not sent to a new host")
	}
	if c.GrantType == GrantRefreshToken && refreshToken == "" && cur.RefreshToken != "" {
		return invalidArg("credential.refresh_token", "required when token_url moves to another scheme or host: the stored refresh token is not sent to a new host")
	}
	return nil
}

// sameOrigin reports whether two token URLs share scheme and host (with
// port).
func sameOrigin(a, b string) bool {
	ua, errA := url.Parse(a)
	ub, errB := url.Parse(b)
	return errA == nil && errB == nil && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}

// GetCredential returns a credential's record. Callers must not hand its
// secrets out.
func (b *Broker) GetCredential(ctx context.Context, id string) (*Record, error) {
	if err := b.admin(ctx); err != nil {
		return nil, err
	}
	if err := ValidateID("id", id); err != nil {
		return nil, err
	}
	rec, err := b.store.Get(ctx, id)
	if err != nil {
		return nil, storeErr(id, err)
	}
	b.adopt(rec)
	return rec, nil
}

// ListCredentials returns up to pageSize records (0: DefaultPageSize) in ID
// order after the position pageToken names, and the token of the next page
// ("" on the last).
func (b *Broker) ListCredentials(ctx context.Context, pageSize int, pageToken string) ([]*Record, string, error) {
	if err := b.admin(ctx); err != nil {
		return nil, "", err
	}
	if pageSize < 0 || pageSize > MaxPageSize {
		return nil, "", invalidArg("page_size", "must be 0 to %d", MaxPageSize)
	}
	if pageSize == 0 {
		pageSize = DefaultPageSize
	}
	after := ""
	if pageToken != "" {
		raw, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || ValidateID("page_token", string(raw)) != nil {
			return nil, "", invalidArg("page_token", "not a token from a previous page")
		}
		after = string(raw)
	}
	recs, err := b.store.List(ctx, after, pageSize+1)
	if err != nil {
		return nil, "", storeErr("", err)
	}
	next := ""
	if len(recs) > pageSize {
		recs = recs[:pageSize]
		next = base64.RawURLEncoding.EncodeToString([]byte(recs[pageSize-1].ID))
	}
	return recs, next, nil
}

// DeleteCredential removes a credential. Deleting a missing one fails with
// ErrNotFound; a record that cannot be opened (ErrUnreadable) is deleted
// too, so that it can be put again.
func (b *Broker) DeleteCredential(ctx context.Context, id string) error {
	if err := b.admin(ctx); err != nil {
		return err
	}
	if err := ValidateID("id", id); err != nil {
		return err
	}
	cur, err := b.store.Get(ctx, id)
	if err != nil && !errors.Is(err, ErrUnreadable) {
		return storeErr(id, err)
	}
	if err := b.store.Delete(ctx, id); err != nil {
		return storeErr(id, err)
	}
	b.drop(id)
	if cur == nil {
		cur = &Record{Credential: Credential{ID: id}, State: StateUnreadable}
	}
	caller, _ := CallerFrom(ctx)
	b.changed(ChangeDeleted, cur, nil, caller.ID, "deleted")
	return nil
}

// RefreshCredential refreshes a credential now, unless another refresh
// finished since the call began; forced refreshes are rate-limited by
// Config.ForceInterval.
func (b *Broker) RefreshCredential(ctx context.Context, id string) (*Record, error) {
	if err := b.admin(ctx); err != nil {
		return nil, err
	}
	if err := ValidateID("id", id); err != nil {
		return nil, err
	}
	caller, _ := CallerFrom(ctx)
	start := time.Now()
	return b.refresh(ctx, "force\x00"+id, flight{
		id:     id,
		caller: caller.Name(),
		reason: ReasonForced,
		forced: true,
		need:   func(r *Record, _ time.Time) bool { return r.LastRefreshAt.Before(start) },
	})
}

// Reencryption is the outcome of one page of ReencryptCredentials.
type Reencryption struct {
	PrimaryKey    string // the key records are now sealed under; "" if the Store does not seal
	Checked       int    // records looked at
	Reencrypted   int    // records rewritten under the primary key
	NextPageToken string // "" on the last page
}

// ReencryptCredentials rewrites, one page at a time, every stored record that
// is not sealed under the Store's primary key (or not sealed at all), so that
// an old key can be retired once a full pass reports nothing left to do. A
// record is rewritten under its lease, fenced like a refresh, so it never
// races a refresh. With a Store that does not seal, it changes nothing.
func (b *Broker) ReencryptCredentials(ctx context.Context, pageSize int, pageToken string) (*Reencryption, error) {
	recs, next, err := b.ListCredentials(ctx, pageSize, pageToken)
	if err != nil {
		return nil, err
	}
	out := &Reencryption{Checked: len(recs), NextPageToken: next}
	rs, ok := b.store.(Resealer)
	if !ok {
		return out, nil
	}
	out.PrimaryKey = rs.PrimaryKey()
	if out.PrimaryKey == "" {
		return out, nil
	}
	for _, r := range recs {
		if r.State == StateUnreadable {
			continue // cannot be opened, so cannot be re-sealed
		}
		done, err := b.reseal(ctx, rs, r.ID, out.PrimaryKey)
		if err != nil {
			return nil, err
		}
		if done {
			out.Reencrypted++
		}
	}
	return out, nil
}

// reseal rewrites one record if it is not sealed under primary.
func (b *Broker) reseal(ctx context.Context, rs Resealer, id, primary string) (bool, error) {
	key, err := rs.SealedWith(ctx, id)
	if errors.Is(err, ErrNotFound) || (err == nil && key == primary) {
		return false, nil
	}
	if err != nil {
		return false, storeErr(id, err)
	}
	lease, err := b.acquire(ctx, id, nil)
	if err != nil {
		return false, err
	}
	defer b.release(ctx, lease)
	rec, err := b.store.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, storeErr(id, err)
	}
	if rec.Pending != nil {
		return false, nil // its outcome is sealed under the primary key when stored
	}
	m := b.mark(id)
	gen, err := b.store.Commit(ctx, lease, rec)
	if err != nil {
		return false, storeErr(id, err)
	}
	rec.Generation = gen
	b.fill(rec, m)
	return true, nil
}

func (b *Broker) admin(ctx context.Context) error {
	c, _ := CallerFrom(ctx)
	if !b.mayAdmin(c) {
		return &Error{Kind: ErrPermissionDenied, Detail: "admin identity required"}
	}
	return nil
}
