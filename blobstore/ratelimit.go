package blobstore

import "context"

// RateLimiter bounds a rate of bytes with a token bucket, as the scrubber
// does its reads: repair uses it for the shards it fetches and writes. A nil
// *RateLimiter does not limit. It is safe for concurrent use.
type RateLimiter struct {
	b *tokenBucket
}

// NewRateLimiter returns a limiter of bytesPerSecond, or nil (no limit) when
// bytesPerSecond <= 0. A burst of a tenth of a second's worth (at least
// 256 KiB) may pass at once; a larger request is let through and repaid by
// waiting, so the long-run rate holds whatever the request sizes.
func NewRateLimiter(bytesPerSecond int64) *RateLimiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	rate := float64(bytesPerSecond)
	return &RateLimiter{b: newTokenBucket(rate, max(scrubChunk, rate/10))}
}

// Wait takes n bytes' worth of tokens, sleeping while the bucket is in debt,
// or returns ctx's error when ctx ends first.
func (l *RateLimiter) Wait(ctx context.Context, n int) error {
	if l == nil {
		return ctx.Err()
	}
	return l.b.wait(ctx, n)
}

// NewRateLimiterBurst returns a limiter of perSecond units (bytes, or
// anything counted) of which burst may pass at once, or nil when perSecond
// <= 0.
func NewRateLimiterBurst(perSecond, burst float64) *RateLimiter {
	if perSecond <= 0 {
		return nil
	}
	return &RateLimiter{b: newTokenBucket(perSecond, max(burst, 1))}
}
