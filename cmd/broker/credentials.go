package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	"github.com/tokenbroker/tokenbroker/internal/grpcapi"
	"github.com/tokenbroker/tokenbroker/internal/memstore"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// maxCredentialsFile bounds the size of --credentials-file.
const maxCredentialsFile = 16 << 20

// seedCredential is one entry of the credentials file, converted.
type seedCredential struct {
	cred         broker.Credential
	refreshToken string
}

// credentialsFile is the layout of --credentials-file. Each entry is a
// tokenbroker.v1.Credential in protojson, with the API's field names
// (token_url or tokenUrl).
type credentialsFile struct {
	Credentials []json.RawMessage `json:"credentials"`
}

// loadCredentials reads and converts the credentials file. It checks each
// entry completely, as PutCredential would, against a throwaway in-memory
// broker, so that a bad entry stops the start before anything is dialled.
// Its errors are *configError naming the entry and the field, never a
// secret.
func loadCredentials(ctx context.Context, path string) ([]seedCredential, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, badConfig("--credentials-file: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return nil, badConfig("--credentials-file: %v", err)
	}
	if len(data) > maxCredentialsFile {
		return nil, badConfig("--credentials-file %s: larger than %d bytes", path, maxCredentialsFile)
	}
	var file credentialsFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return nil, badConfig("--credentials-file %s: not a JSON object {\"credentials\": [...]}: %s", path, jsonErr(err))
	}
	if dec.More() {
		return nil, badConfig("--credentials-file %s: data after the JSON object", path)
	}

	seeds := make([]seedCredential, 0, len(file.Credentials))
	seen := map[string]int{}
	for i, raw := range file.Credentials {
		var c pb.Credential
		if err := protojson.Unmarshal(raw, &c); err != nil {
			return nil, badConfig("--credentials-file %s: credentials[%d]: %s", path, i, protoErr(err))
		}
		name := fmt.Sprintf("credentials[%d]", i)
		if id := c.GetId(); broker.ValidateID("id", id) == nil {
			name += fmt.Sprintf(" (id %q)", id)
			if j, dup := seen[id]; dup {
				return nil, badConfig("--credentials-file %s: %s: same id as credentials[%d]", path, name, j)
			}
			seen[id] = i
		}
		cred, rt, err := grpcapi.CredentialFromProto(&c)
		if err != nil {
			return nil, badConfig("--credentials-file %s: %s: %v", path, name, err)
		}
		seeds = append(seeds, seedCredential{cred: cred, refreshToken: rt})
	}
	if err := dryRun(ctx, seeds); err != nil {
		if errors.Is(err, broker.ErrInvalidArgument) {
			return nil, badConfig("--credentials-file %s: %v", path, err)
		}
		return nil, fmt.Errorf("checking --credentials-file: %w", err)
	}
	return seeds, nil
}

// dryRun puts every seed into an in-memory broker that cannot reach any IdP,
// which validates it as the real one will; the result is thrown away. A
// missing refresh token is left to the real store to judge: it is required
// only for a credential that does not exist there yet.
func dryRun(ctx context.Context, seeds []seedCredential) error {
	b, err := broker.New(memstore.New(), noIdP{}, broker.Config{Open: true})
	if err != nil {
		return err
	}
	defer b.Close()
	for i, s := range seeds {
		rt := s.refreshToken
		if rt == "" && s.cred.GrantType == broker.GrantRefreshToken {
			rt = "dry-run"
		}
		if _, err := b.PutCredential(ctx, s.cred, rt); err != nil {
			return fmt.Errorf("credentials[%d] (id %q): %w", i, s.cred.ID, err)
		}
	}
	return nil
}

// noIdP is the Upstream of the dry run: it never calls anything.
type noIdP struct{}

func (noIdP) Exchange(context.Context, broker.UpstreamRequest) (*broker.UpstreamToken, error) {
	return nil, errors.New("dry run: no IdP")
}

// seedCredentials ensures every credential of the file exists, as the admin
// identity "credentials-file": missing ones are created with their refresh
// token, existing ones get the file's configuration and keep their refresh
// token and state (broker.EnsureCredential).
func seedCredentials(ctx context.Context, b *broker.Broker, seeds []seedCredential) error {
	ctx = broker.NewContext(ctx, broker.Caller{ID: "credentials-file", Admin: true})
	for i, s := range seeds {
		if _, err := b.EnsureCredential(ctx, s.cred, s.refreshToken); err != nil {
			if errors.Is(err, broker.ErrInvalidArgument) {
				return badConfig("--credentials-file: credentials[%d] (id %q): %v", i, s.cred.ID, err)
			}
			return fmt.Errorf("seeding credentials[%d] (id %q): %w", i, s.cred.ID, err)
		}
	}
	return nil
}

// jsonErr describes a JSON error by its position only: encoding/json quotes
// pieces of the input, which may be a secret.
func jsonErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("wrong type for %q at byte %d", te.Field, te.Offset)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "unexpected end of input"
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return strings.TrimPrefix(msg, "json: ")
	}
	return "malformed"
}

// protoErr is a protojson error without its unstable "proto:" prefix nor
// the offending value, which may be a secret ("invalid value for string
// field clientSecret: 123").
func protoErr(err error) string {
	msg := strings.ReplaceAll(err.Error(), "\u00a0", " ") // protojson randomizes this space
	msg = strings.TrimSpace(strings.TrimPrefix(msg, "proto:"))
	if i := strings.Index(msg, "invalid value for "); i >= 0 {
		if j := strings.LastIndex(msg, ": "); j > i {
			msg = msg[:j]
		}
	}
	if i := strings.Index(msg, "unexpected token"); i >= 0 {
		msg = msg[:i+len("unexpected token")]
	}
	return msg
}
