package loadbench

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestBucketsAreContiguous(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v++ {
		b := bucketOf(v)
		if b != prev && b != prev+1 {
			t.Fatalf("bucketOf(%d) = %d after %d", v, b, prev)
		}
		prev = b
	}
	if got := bucketOf(uint64(maxTracked)); got != histBuckets-1 {
		t.Fatalf("bucketOf(maxTracked) = %d, want the last bucket %d", got, histBuckets-1)
	}
}

func TestBucketMidIsInsideItsBucket(t *testing.T) {
	for i := range histBuckets {
		if got := bucketOf(bucketMid(i)); got != i {
			t.Fatalf("bucketOf(bucketMid(%d)) = %d", i, got)
		}
	}
}

func TestQuantileMatchesExactSamples(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var exact []time.Duration
	for range 100_000 {
		// Log-uniform from 1µs to 100ms, like latencies.
		d := time.Duration(float64(time.Microsecond) * math.Pow(10, 5*rng.Float64()))
		h.record(d)
		exact = append(exact, d)
	}
	for _, q := range []float64{0.01, 0.5, 0.9, 0.99, 0.999} {
		got, want := h.quantile(q), quantileOf(exact, q)
		if rel := float64(got-want) / float64(want); rel > 1.0/subCount || rel < -1.0/subCount {
			t.Errorf("quantile(%v) = %v, exact %v: off by %.2f%%", q, got, want, 100*rel)
		}
	}
	if h.quantile(0) != exact[0] || h.quantile(1) != exact[len(exact)-1] {
		t.Errorf("extremes: %v..%v, exact %v..%v", h.quantile(0), h.quantile(1), exact[0], exact[len(exact)-1])
	}
}

func TestMergeAndEmpty(t *testing.T) {
	var a, b, empty histogram
	if empty.quantile(0.5) != 0 {
		t.Fatal("empty histogram has a median")
	}
	for i := 1; i <= 50; i++ {
		a.record(time.Duration(i))
		b.record(time.Duration(50 + i))
	}
	a.merge(&b)
	a.merge(&empty)
	if a.n != 100 || a.min != 1 || a.max != 100 {
		t.Fatalf("merged: n=%d min=%v max=%v", a.n, a.min, a.max)
	}
	if got := a.quantile(0.5); got != 50 {
		t.Fatalf("median of 1..100 = %v, want 50", got)
	}
	a.record(-time.Second)
	a.record(time.Hour)
	if a.min != 0 || a.max != maxTracked {
		t.Fatalf("out of range values: min=%v max=%v", a.min, a.max)
	}
}

func TestMedian(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median(3,1,2) = %v", got)
	}
	if got := median([]time.Duration{4, 1, 3, 2}); got != 2 {
		t.Errorf("median(4,1,3,2) = %v (integer mean of 2 and 3)", got)
	}
	if got := median[float64](nil); got != 0 {
		t.Errorf("median() = %v", got)
	}
}
