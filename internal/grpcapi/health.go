package grpcapi

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/internal/broker"
	pb "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// LivenessService is the grpc.health.v1 service name that reports the
// process alone: SERVING from NewServer until the server stops, whatever
// the Store does. Probes that restart a process (a Kubernetes liveness
// probe) ask for it; probes that route traffic ask for "" or a service
// name, which follow SetReady and turn NOT_SERVING at Drain.
const LivenessService = "liveness"

// readinessServices are the grpc.health.v1 names that report readiness: the
// server as a whole ("") and each service.
var readinessServices = []string{"", pb.TokenService_ServiceDesc.ServiceName, pb.AdminService_ServiceDesc.ServiceName}

// drainState counts the calls in flight, so that Drain can wait for them
// while the listener still answers (health reports NOT_SERVING to new
// connections, and other calls are refused with SHUTTING_DOWN).
type drainState struct {
	draining atomic.Bool
	inFlight atomic.Int64 // unary calls in flight
}

// enter counts a call in, or returns false once Drain has begun. The count
// is raised before draining is read, so Drain, which sets draining before
// it reads the count, never misses a call that got in.
func (d *drainState) enter() bool {
	d.inFlight.Add(1)
	if d.draining.Load() {
		d.inFlight.Add(-1)
		return false
	}
	return true
}

func (d *drainState) leave() { d.inFlight.Add(-1) }

// errShuttingDown is what calls that arrive during a drain end with.
var errShuttingDown = &broker.Error{Kind: broker.ErrShuttingDown, RetryAfter: time.Second,
	Detail: "this replica is shutting down; retry on another"}

// SetReady sets the readiness the health service reports for "" and each
// service: SERVING or NOT_SERVING. LivenessService is not affected. Once
// Drain has begun, readiness stays NOT_SERVING.
func (s *Server) SetReady(ready bool) {
	if s.drain.draining.Load() {
		return
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, name := range readinessServices {
		s.health.SetServingStatus(name, st)
	}
}

// Drain begins a shutdown without closing the listener: readiness turns
// NOT_SERVING at once (health watchers are told, and new connections can
// still ask), calls that arrive from now on fail with UNAVAILABLE, reason
// SHUTTING_DOWN, and Drain waits until the calls in flight are over or ctx
// ends. It returns how many calls were still in flight then (0 when all
// finished). Health and reflection keep answering. Shutdown then closes
// the listener.
func (s *Server) Drain(ctx context.Context) int {
	if !s.drain.draining.Swap(true) {
		if s.stop != nil {
			s.stop() // streams end with SHUTTING_DOWN (WatchToken, drainStream)
		}
		for _, name := range readinessServices {
			s.health.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		n := s.drain.inFlight.Load()
		if n <= 0 {
			return 0
		}
		select {
		case <-ctx.Done():
			return int(n)
		case <-tick.C:
		}
	}
}

// drainStream runs a stream handler that is not health's or reflection's:
// refused during a drain, and ended with SHUTTING_DOWN when a drain (or
// Shutdown) begins.
func (s *Server) drainStream(ss grpc.ServerStream, run func(grpc.ServerStream) error) error {
	if s.drain.draining.Load() {
		return errShuttingDown
	}
	if s.stopping == nil {
		return run(ss)
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	err := run(&serverStream{ServerStream: ss, ctx: ctx})
	if err != nil && s.stopping.Err() != nil {
		return errShuttingDown
	}
	return err
}

// InFlight is the number of calls (but health and reflection) in flight.
func (s *Server) InFlight() int { return int(s.drain.inFlight.Load()) }
