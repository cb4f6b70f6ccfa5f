package grpcapi

import (
	"context"
	"slices"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// updatable are the paths of Credential that UpdateCredential changes,
// each copying its field of the request (converted as PutCredential's)
// into the stored configuration. client_secret and
// fallback_client_secrets both set the secrets: client_secret then the
// fallbacks, as in PutCredential; left empty, they keep the stored ones.
// refresh_token, also updatable, re-seeds the credential (UpdateCredential
// handles it apart).
var updatable = map[string]func(dst *broker.Credential, src *broker.Credential){
	"token_url":                func(d, s *broker.Credential) { d.TokenURL = s.TokenURL },
	"client_id":                func(d, s *broker.Credential) { d.ClientID = s.ClientID },
	"client_secret":            func(d, s *broker.Credential) { d.ClientSecrets = s.ClientSecrets },
	"fallback_client_secrets":  func(d, s *broker.Credential) { d.ClientSecrets = s.ClientSecrets },
	"scopes":                   func(d, s *broker.Credential) { d.Scopes = s.Scopes },
	"auth_style":               func(d, s *broker.Credential) { d.AuthStyle = s.AuthStyle },
	"allowed_clients":          func(d, s *broker.Credential) { d.AllowedClients = s.AllowedClients },
	"refresh_ahead":            func(d, s *broker.Credential) { d.RefreshAhead = s.RefreshAhead },
	"grant_type":               func(d, s *broker.Credential) { d.GrantType = s.GrantType },
	"reuse_grace":              func(d, s *broker.Credential) { d.ReuseGrace = s.ReuseGrace },
	"authorization_url":        func(d, s *broker.Credential) { d.AuthorizationURL = s.AuthorizationURL },
	"device_authorization_url": func(d, s *broker.Credential) { d.DeviceAuthorizationURL = s.DeviceAuthorizationURL },
	"redirect_url":             func(d, s *broker.Credential) { d.RedirectURL = s.RedirectURL },
	"revokes_previous_access_token": func(d, s *broker.Credential) {
		d.RevokesPreviousAccessToken = s.RevokesPreviousAccessToken
	},
}

// refreshTokenPath re-seeds the credential.
const refreshTokenPath = "refresh_token"

// outputOnly are Credential's fields that the broker sets: refused in a
// mask, skipped when the mask is implied.
var outputOnly = map[string]bool{
	"state": true, "generation": true, "expires_at": true, "last_refresh_at": true, "last_error": true,
	"last_error_at": true, "has_refresh_token": true, "client_secret_count": true, "create_time": true,
	"update_time": true, "next_attempt_at": true, "reauth_reason": true, "pending_authorization": true,
}

func (s *adminService) UpdateCredential(ctx context.Context, req *pb.UpdateCredentialRequest) (*pb.UpdateCredentialResponse, error) {
	in := req.GetCredential()
	if in == nil {
		return nil, invalidArg("credential", "must be set")
	}
	paths, err := maskPaths(req)
	if err != nil {
		return nil, err
	}
	src, refreshToken, err := CredentialFromProto(in)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(paths, refreshTokenPath) {
		refreshToken = ""
	} else if refreshToken == "" {
		return nil, invalidArg("credential.refresh_token", "must not be empty when update_mask names it (to keep the stored one, leave it out of the mask)")
	}
	rec, err := s.b.UpdateCredential(ctx, in.GetId(), func(cur broker.Credential) (broker.Credential, string, error) {
		for _, p := range paths {
			if set := updatable[p]; set != nil {
				set(&cur, &src)
			}
		}
		return cur, refreshToken, nil
	})
	if err != nil {
		return nil, err
	}
	return &pb.UpdateCredentialResponse{Credential: publicView(rec)}, nil
}

// maskPaths returns the paths to update: the mask's, checked, or without
// one the fields set in the request's credential (AIP-134), output-only
// ones and id left out.
func maskPaths(req *pb.UpdateCredentialRequest) ([]string, error) {
	m := req.GetUpdateMask()
	if m == nil {
		var paths []string
		req.GetCredential().ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
			name := string(fd.Name())
			if name != "id" && !outputOnly[name] {
				paths = append(paths, name)
			}
			return true
		})
		if len(paths) == 0 {
			return nil, invalidArg("update_mask", "names no field, and the credential sets none to change")
		}
		return paths, nil
	}
	if len(m.GetPaths()) == 0 {
		return nil, invalidArg("update_mask", "names no field")
	}
	for _, p := range m.GetPaths() {
		switch {
		case p == "*":
			return nil, invalidArg("update_mask", "\"*\" is not supported: PutCredential replaces a credential whole")
		case p == "id":
			return nil, invalidArg("update_mask", "id cannot be changed")
		case outputOnly[p] || strings.HasPrefix(p, "pending_authorization."):
			return nil, invalidArg("update_mask", "%s is output only", p)
		case updatable[p] == nil && p != refreshTokenPath:
			return nil, invalidArg("update_mask", "%q is not a field of Credential that can be updated", p)
		}
	}
	return m.GetPaths(), nil
}
