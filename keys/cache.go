package keys

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sort"
	"sync"
	"time"
)

// Cache is a Provider that remembers what Decrypt returned, so that reading
// a hot blob does not cost a KMS round trip every time (the Kubernetes API
// server keeps such a cache of data keys for the same reason). Encrypt,
// CurrentVersion and Status go to the provider underneath every time.
//
// Entries are keyed by a SHA-256 of the whole WrappedKey, hold a copy of the
// plaintext, and expire after a TTL; the least recently used go first when
// the cache is full. The TTL is also how long a key destroyed in the KMS (or
// in another process's keyring) keeps unwrapping in this process: call Purge
// after destroying or retiring a key here.
type Cache struct {
	p   Provider
	max int
	ttl time.Duration
	now func() time.Time

	mu      sync.Mutex
	entries map[[32]byte]*list.Element
	lru     list.List // of *cacheEntry, most recent first
}

type cacheEntry struct {
	id      [32]byte
	plain   []byte
	expires time.Time
}

var _ Provider = (*Cache)(nil)

// NewCache returns a Cache over p holding at most size entries for at most
// ttl each.
func NewCache(p Provider, size int, ttl time.Duration) *Cache {
	return &Cache{p: p, max: max(size, 1), ttl: ttl, now: time.Now, entries: map[[32]byte]*list.Element{}}
}

// cacheID identifies a WrappedKey by all of its fields, unambiguously.
func cacheID(wk WrappedKey) [32]byte {
	h := sha256.New()
	field := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	field([]byte(wk.KeyName))
	field([]byte(wk.KeyVersion))
	field(wk.Ciphertext)
	names := make([]string, 0, len(wk.Annotations))
	for k := range wk.Annotations {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		field([]byte(k))
		field(wk.Annotations[k])
	}
	var id [32]byte
	h.Sum(id[:0])
	return id
}

// Decrypt implements Provider.
func (c *Cache) Decrypt(ctx context.Context, wk WrappedKey) ([]byte, error) {
	id := cacheID(wk)
	now := c.now()
	c.mu.Lock()
	if el, ok := c.entries[id]; ok {
		e := el.Value.(*cacheEntry)
		if now.Before(e.expires) {
			c.lru.MoveToFront(el)
			out := append([]byte(nil), e.plain...)
			c.mu.Unlock()
			return out, nil
		}
		c.remove(el)
	}
	c.mu.Unlock()

	plain, err := c.p.Decrypt(ctx, wk)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[id]; ok { // filled meanwhile
		c.remove(el)
	}
	c.entries[id] = c.lru.PushFront(&cacheEntry{id: id, plain: append([]byte(nil), plain...), expires: now.Add(c.ttl)})
	for c.lru.Len() > c.max {
		c.remove(c.lru.Back())
	}
	return plain, nil
}

func (c *Cache) remove(el *list.Element) {
	e := el.Value.(*cacheEntry)
	clear(e.plain)
	delete(c.entries, e.id)
	c.lru.Remove(el)
}

// Purge forgets every cached plaintext.
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.lru.Len() > 0 {
		c.remove(c.lru.Back())
	}
}

// Len returns the number of cached entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Encrypt implements Provider.
func (c *Cache) Encrypt(ctx context.Context, keyName string, plaintext []byte) (WrappedKey, error) {
	return c.p.Encrypt(ctx, keyName, plaintext)
}

// CurrentVersion implements Provider.
func (c *Cache) CurrentVersion(ctx context.Context, keyName string) (string, error) {
	return c.p.CurrentVersion(ctx, keyName)
}

// Status implements Provider.
func (c *Cache) Status(ctx context.Context) error { return c.p.Status(ctx) }
