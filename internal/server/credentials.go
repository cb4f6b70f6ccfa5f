package server

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

// loadCredentials reads and converts the credentials file at path, and
// checks each entry completely, as PutCredential would
// (broker.ValidateCredential), so that a bad entry stops the start before
// anything is dialled. Its errors are *ConfigError naming the entry and the
// field, never a secret.
func loadCredentials(path string) ([]seedCredential, error) {
	raw, err := readCredentialsFile(path)
	if err != nil {
		return nil, err
	}
	seeds := make([]seedCredential, 0, len(raw))
	seen := map[string]int{}
	for i, entry := range raw {
		var c pb.Credential
		if err := protojson.Unmarshal(entry, &c); err != nil {
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
		// A missing refresh token is left to the Store to judge: only a
		// credential that does not exist yet needs one.
		if err := broker.ValidateCredential(cred, rt); err != nil {
			return nil, badConfig("--credentials-file %s: credentials[%d] (id %q): %v", path, i, cred.ID, err)
		}
		seeds = append(seeds, seedCredential{cred: cred, refreshToken: rt})
	}
	return seeds, nil
}

// readCredentialsFile reads the file at path and returns its entries, not
// yet parsed.
func readCredentialsFile(path string) ([]json.RawMessage, error) {
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
	return file.Credentials, nil
}

// seedCaller is the admin identity the credentials file is put in as.
var seedCaller = broker.Caller{ID: "credentials-file", Admin: true}

// seedCredentials ensures every credential of the file exists: missing ones
// are created with their refresh token, existing ones get the file's
// configuration and keep their refresh token and state
// (broker.EnsureCredential). It is atomic as far as the file goes: every
// entry is checked against the Store first (a new credential needs a
// refresh token, ...), and nothing is written unless all pass.
func seedCredentials(ctx context.Context, b *broker.Broker, seeds []seedCredential) error {
	ctx = broker.NewContext(ctx, seedCaller)
	for i, s := range seeds {
		if err := b.CheckEnsureCredential(ctx, s.cred, s.refreshToken); err != nil {
			if errors.Is(err, broker.ErrInvalidArgument) {
				return badConfig("--credentials-file: credentials[%d] (id %q): %v (nothing was written)", i, s.cred.ID, err)
			}
			return fmt.Errorf("checking credentials[%d] (id %q): %w", i, s.cred.ID, err)
		}
	}
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
