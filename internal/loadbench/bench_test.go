package loadbench

import (
	"context"
	"testing"

	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// The serial cached path through TCP: the broker as make bench wires it
// (authentication, per-client limit, audit, metrics), and the gRPC floor
// answering the same messages. The difference is what the broker adds per
// call; client and server allocations are both counted.

func benchHot(b *testing.B, floor bool) {
	needRedis(b)
	ctx := context.Background()
	e, err := newEnv(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer e.close()
	h, err := e.startHot(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer h.close()
	addr, method := h.rep.addr, pb.TokenService_GetToken_FullMethodName
	if floor {
		addr, method = h.floor.addr, floorMethod
	}
	conns, err := dialPool(addr, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer closePool(conns)
	callCtx := e.callerContext(ctx)
	req, resp := &pb.GetTokenRequest{CredentialId: hotCredential}, new(pb.GetTokenResponse)
	if err := conns[0].Invoke(callCtx, method, req, resp); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := conns[0].Invoke(callCtx, method, req, resp); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCachedGetToken(b *testing.B) { benchHot(b, false) }

func BenchmarkFloor(b *testing.B) { benchHot(b, true) }
