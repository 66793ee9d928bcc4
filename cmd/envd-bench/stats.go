package main

import (
	"math"
	"sort"
)

// percentile returns the p-th percentile (0–100) of xs by the nearest-rank
// method; xs is not modified.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(s) {
		rank = len(s)
	}
	return s[rank-1]
}

// median is the middle value (mean of the two middle values for an even
// count).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// mbps is bytes per second in MB/s (10^6 bytes).
func mbps(bytes int64, seconds float64) float64 {
	if seconds <= 0 {
		return math.NaN()
	}
	return float64(bytes) / 1e6 / seconds
}
