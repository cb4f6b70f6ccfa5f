package clientsdk_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/tokenbroker/tokenbroker/clientsdk"
	tbv1 "github.com/tokenbroker/tokenbroker/proto/tokenbroker/v1"
)

// serveExample serves register's services on 127.0.0.1 with opts, and
// returns the address and a func that stops the server.
func serveExample(register func(*grpc.Server), opts ...grpc.ServerOption) (addr string, stop func()) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	register(srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(lis)
	}()
	return lis.Addr().String(), func() {
		srv.Stop()
		<-done
	}
}

// exampleBroker runs a miniature broker on 127.0.0.1: it hands out "tok-1",
// "tok-2", ... and refreshes when told a current token was rejected.
func exampleBroker() (addr string, broker *fakeBroker, stop func()) {
	broker = newFakeBroker()
	addr, stop = serveExample(func(s *grpc.Server) { tbv1.RegisterTokenServiceServer(s, broker) })
	return addr, broker, stop
}

func ExampleTokenSource() {
	addr, _, stop := exampleBroker()
	defer stop()

	// In production: Dial("dns:///broker.internal:7070", clientsdk.WithAPIKey(key)),
	// which uses TLS by default.
	client, err := clientsdk.Dial(addr, clientsdk.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// One TokenSource per credential, shared by every goroutine.
	ts := client.TokenSource("orders-api", clientsdk.WithEarlyExpiry(30*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tok, err := ts.TokenContext(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Type(), tok.AccessToken)

	again, _ := ts.Token() // from the cache: no broker call, no allocation
	fmt.Println("same token:", again == tok)
	// Output:
	// Bearer tok-1
	// same token: true
}

func ExampleTransport() {
	addr, broker, stop := exampleBroker()
	defer stop()
	client, err := clientsdk.Dial(addr, clientsdk.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ts := client.TokenSource("orders-api")

	// A protected API that accepts only the broker's current token.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+broker.current() {
			fmt.Println("api: 401 for", r.Header.Get("Authorization"))
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		fmt.Println("api: 200 for", r.Header.Get("Authorization"))
		io.WriteString(w, "orders")
	}))
	defer api.Close()

	httpClient := &http.Client{Transport: &clientsdk.Transport{Source: ts}}
	if _, err := ts.Token(); err != nil { // tok-1 is now cached here...
		log.Fatal(err)
	}
	broker.rotate() // ...and revoked elsewhere: the broker has moved on to tok-2

	resp, err := httpClient.Get(api.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, string(body))
	// Output:
	// api: 401 for Bearer tok-1
	// api: 200 for Bearer tok-2
	// 200 OK orders
}

func ExampleUnaryClientInterceptor() {
	brokerAddr, broker, stopBroker := exampleBroker()
	defer stopBroker()
	client, err := clientsdk.Dial(brokerAddr, clientsdk.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ts := client.TokenSource("inventory")

	// Another gRPC service that accepts only the broker's current token.
	svc := &protected{broker: broker}
	addr, stop := serveExample(func(s *grpc.Server) { healthpb.RegisterHealthServer(s, svc) },
		grpc.UnaryInterceptor(svc.unaryAuth))
	defer stop()

	// AllowInsecure only because this example has no TLS.
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(clientsdk.UnaryClientInterceptor(ts, clientsdk.AllowInsecure())),
		grpc.WithStreamInterceptor(clientsdk.StreamClientInterceptor(ts, clientsdk.AllowInsecure())))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	if _, err := ts.Token(); err != nil { // tok-1 is cached...
		log.Fatal(err)
	}
	broker.rotate() // ...and goes stale
	resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetStatus(), "after sending", svc.seen())
	// Output: SERVING after sending [Bearer tok-1 Bearer tok-2]
}

func ExampleError() {
	addr, broker, stop := exampleBroker()
	defer stop()
	client, err := clientsdk.Dial(addr, clientsdk.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// The identity provider has revoked the credential's grant.
	broker.failNext(brokerError(codes.FailedPrecondition, "REAUTH_REQUIRED"))

	_, err = client.TokenSource("orders-api").Token()
	switch {
	case errors.Is(err, clientsdk.ErrReauthRequired):
		fmt.Println("an operator must put in a new refresh token")
	case errors.Is(err, clientsdk.ErrUnavailable):
		fmt.Println("transient: retry later")
	}
	var e *clientsdk.Error
	if errors.As(err, &e) {
		fmt.Println(e.Code, e.Reason)
	}
	// Output:
	// an operator must put in a new refresh token
	// FailedPrecondition REAUTH_REQUIRED
}
