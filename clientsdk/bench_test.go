package clientsdk_test

import (
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// The cached path of TokenSource.Token beside x/oauth2's ReuseTokenSource
// over a static source (a mutex and a Valid check per call).

func BenchmarkTokenSourceCached(b *testing.B) {
	f := newFakeBroker()
	ts := startBroker(b, f).TokenSource("cred")
	mustToken(b, ts)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ts.Token(); err != nil {
			b.Fatal(err)
		}
	}
	if got := f.gets.Load(); got != 1 {
		b.Fatalf("broker calls = %d, want 1", got)
	}
}

func BenchmarkTokenSourceCachedParallel(b *testing.B) {
	f := newFakeBroker()
	ts := startBroker(b, f).TokenSource("cred")
	mustToken(b, ts)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ts.Token(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if got := f.gets.Load(); got != 1 {
		b.Fatalf("broker calls = %d, want 1", got)
	}
}

func reuseSource() oauth2.TokenSource {
	return oauth2.ReuseTokenSource(nil, oauth2.StaticTokenSource(&oauth2.Token{
		AccessToken: "tok-1", TokenType: "Bearer", Expiry: time.Now().Add(time.Hour),
	}))
}

func BenchmarkReuseTokenSource(b *testing.B) {
	ts := reuseSource()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ts.Token(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkReuseTokenSourceParallel(b *testing.B) {
	ts := reuseSource()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := ts.Token(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
