package keys_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-registry/strata/keys"
)

type counting struct {
	keys.Provider
	decrypts atomic.Int64
}

func (c *counting) Decrypt(ctx context.Context, wk keys.WrappedKey) ([]byte, error) {
	c.decrypts.Add(1)
	return c.Provider.Decrypt(ctx, wk)
}

func TestCache(t *testing.T) {
	kr, _ := openNew(t)
	under := &counting{Provider: kr}
	c := keys.NewCache(under, 2, time.Hour)
	var wks [][]byte
	var wrapped []keys.WrappedKey
	for range 3 {
		dk := keys.NewDataKey()
		wk, err := keys.Wrap(bg, c, keys.DefaultKeyName, dk)
		if err != nil {
			t.Fatal(err)
		}
		wks, wrapped = append(wks, dk), append(wrapped, wk)
	}
	for range 3 {
		got, err := keys.Unwrap(bg, c, wrapped[0])
		if err != nil || !bytes.Equal(got, wks[0]) {
			t.Fatal(err)
		}
		got[0] ^= 1 // the caller's copy, not the cache's
	}
	if n := under.decrypts.Load(); n != 1 {
		t.Fatalf("%d decrypts for one key read three times", n)
	}
	// A tampered copy is not a cache hit.
	bad := wrapped[0].Clone()
	bad.Ciphertext[5] ^= 1
	if _, err := keys.Unwrap(bg, c, bad); !errors.Is(err, keys.ErrDecrypt) {
		t.Fatalf("tampered: %v", err)
	}
	// Size 2: the least recently used goes.
	keys.Unwrap(bg, c, wrapped[1])
	keys.Unwrap(bg, c, wrapped[2])
	if c.Len() != 2 {
		t.Fatalf("%d entries", c.Len())
	}
	before := under.decrypts.Load()
	keys.Unwrap(bg, c, wrapped[0])
	if under.decrypts.Load() != before+1 {
		t.Fatal("evicted entry still served")
	}
	// Purge forgets; a destroyed key then fails.
	if err := kr.Destroy(keys.DefaultKeyName); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Unwrap(bg, c, wrapped[0]); err != nil {
		t.Fatalf("cached entry within its TTL: %v", err)
	}
	c.Purge()
	if _, err := keys.Unwrap(bg, c, wrapped[0]); !errors.Is(err, keys.ErrKeyDestroyed) {
		t.Fatalf("after Purge: %v", err)
	}
}

func TestCacheTTL(t *testing.T) {
	kr, _ := openNew(t)
	under := &counting{Provider: kr}
	c := keys.NewCache(under, 10, 30*time.Millisecond)
	wk, _ := keys.Wrap(bg, c, keys.DefaultKeyName, keys.NewDataKey())
	keys.Unwrap(bg, c, wk)
	keys.Unwrap(bg, c, wk)
	time.Sleep(50 * time.Millisecond)
	keys.Unwrap(bg, c, wk)
	if n := under.decrypts.Load(); n != 2 {
		t.Fatalf("%d decrypts, want 2 (one expiry)", n)
	}
}
