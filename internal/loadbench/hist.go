package loadbench

import (
	"math/bits"
	"slices"
	"time"
)

// A histogram counts durations in log-linear buckets, as HDR histograms do:
// exact below 2^subBits ns, then 2^subBits buckets per power of two, so a
// quantile is off by less than 1/2^subBits (under 1.6%). Durations above
// maxTracked count as maxTracked. Its memory is fixed whatever the count.
// The zero value is empty; it is not safe for concurrent use.
type histogram struct {
	counts   [histBuckets]uint32
	n        uint64
	min, max time.Duration
}

const (
	subBits     = 6
	subCount    = 1 << subBits
	maxShift    = 30 // values up to 2^(maxShift+subBits+1) ns, about 137 s
	histBuckets = (maxShift + 2) << subBits
	maxTracked  = time.Duration(1)<<(maxShift+subBits+1) - 1
)

// bucketOf returns the bucket of v ns.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits - 1
	return (shift+1)<<subBits + int(v>>shift) - subCount
}

// bucketMid returns the middle of bucket i, in ns.
func bucketMid(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	shift := i>>subBits - 1
	lo := uint64(i&(subCount-1)+subCount) << shift
	return lo + (uint64(1)<<shift)/2
}

// record counts one duration.
func (h *histogram) record(d time.Duration) {
	d = min(max(d, 0), maxTracked)
	if h.n == 0 || d < h.min {
		h.min = d
	}
	h.max = max(h.max, d)
	h.counts[bucketOf(uint64(d))]++
	h.n++
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the duration below which a fraction q of the counts
// fall (the nearest rank), clamped to the exact min and max, which it
// returns for the first and last ranks; 0 when empty.
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	switch rank {
	case 1:
		return h.min
	case h.n:
		return h.max
	}
	var seen uint64
	for i, c := range h.counts {
		seen += uint64(c)
		if seen >= rank {
			return min(max(time.Duration(bucketMid(i)), h.min), h.max)
		}
	}
	return h.max
}

// quantileOf returns the q quantile (nearest rank) of exact samples; 0 when
// there are none. It sorts ds.
func quantileOf(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(q*float64(len(ds))+0.5) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// median returns the median of xs (the mean of the middle two for an even
// count); 0 when empty. It does not modify xs.
func median[T ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}
