package broker

import (
	"fmt"
	"testing"
	"time"
)

// Credentials whose tokens expire together start their refreshes spread
// over a quarter of the ahead window, the same on every replica.
func TestRefreshAheadIsSpread(t *testing.T) {
	const span = time.Minute
	buckets := make([]int, 10)
	for i := range 10000 {
		j := jitter(fmt.Sprintf("cred-%d", i), 7, span)
		if j < 0 || j >= span {
			t.Fatalf("jitter %v outside [0, %v)", j, span)
		}
		if j != jitter(fmt.Sprintf("cred-%d", i), 7, span) {
			t.Fatal("jitter is not the same for the same credential and generation")
		}
		buckets[j*10/span]++
	}
	for i, n := range buckets {
		if n < 800 || n > 1200 { // 1000 expected in each tenth
			t.Fatalf("tenth %d of the window holds %d of 10000 starts; want about 1000: %v", i, n, buckets)
		}
	}
	if jitter("a", 1, span) == jitter("a", 2, span) && jitter("b", 1, span) == jitter("b", 2, span) {
		t.Fatal("jitter does not change with the generation")
	}
}
