package loadbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/pprof"
	"time"

	"google.golang.org/protobuf/proto"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// Profile profiles the hot path: it drives cached GetToken calls through
// the broker's gRPC server (authentication and metrics on), or with floor
// the same calls to the gRPC floor instead, at the first concurrency of
// cfg, after cfg.Warmup, for d, and writes a CPU profile of those d to cpu
// and then the process's heap allocation profile to allocs (either may be
// nil). The load client runs in the same process, so its share shows in
// the profiles too (under grpc.(*ClientConn).Invoke); a profile of the
// floor taken the same way is what to compare with (go tool pprof
// -diff_base), per call.
func Profile(ctx context.Context, cfg Config, d time.Duration, floor bool, cpu, allocs io.Writer) (Load, error) {
	if err := cfg.validate(); err != nil {
		return Load{}, err
	}
	e, err := newEnv(ctx)
	if err != nil {
		return Load{}, err
	}
	res, err := e.profile(ctx, &cfg, d, floor, cpu, allocs)
	return res, errors.Join(err, e.close())
}

func (e *env) profile(ctx context.Context, cfg *Config, d time.Duration, floor bool, cpu, allocs io.Writer) (Load, error) {
	h, err := e.startHot(ctx)
	if err != nil {
		return Load{}, err
	}
	defer h.close()
	addr, method, what := h.rep.addr, pb.TokenService_GetToken_FullMethodName, "cached GetToken"
	if floor {
		addr, method, what = h.floor.addr, floorMethod, "gRPC floor"
	}
	conns, err := dialPool(addr, cfg.Conns)
	if err != nil {
		return Load{}, err
	}
	defer closePool(conns)
	spec := loadSpec{
		conns: conns, concurrency: cfg.Concurrency[0], duration: max(cfg.Warmup, 100*time.Millisecond), maxCalls: cfg.MaxCalls,
		newCall: unaryCall(method, &pb.GetTokenRequest{CredentialId: hotCredential},
			func() proto.Message { return new(pb.GetTokenResponse) }),
	}
	callCtx := e.callerContext(ctx)
	progress(cfg, "profile: warming up for %s", cfg.Warmup)
	if _, err := runLoad(callCtx, spec); err != nil {
		return Load{}, err
	}
	spec.duration = d
	if cpu != nil {
		if err := pprof.StartCPUProfile(cpu); err != nil {
			return Load{}, fmt.Errorf("loadbench: %w", err)
		}
	}
	progress(cfg, "profile: %d concurrent %s calls for %s", spec.concurrency, what, d)
	r, err := runLoad(callCtx, spec)
	if cpu != nil {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return Load{}, err
	}
	if allocs != nil {
		if err := pprof.Lookup("allocs").WriteTo(allocs, 0); err != nil {
			return Load{}, fmt.Errorf("loadbench: %w", err)
		}
	}
	return summarize([]loadResult{r}), nil
}
