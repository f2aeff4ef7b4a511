// Package lru is a cache with a budget in bytes: when an addition takes it
// over its budget, the entries used least recently are dropped until it fits.
//
// The cache does not measure its values; the caller states each entry's size,
// and should count everything the entry keeps alive. Every entry is charged
// EntryOverhead bytes on top, for the cache's own bookkeeping.
package lru

import (
	"container/list"
	"sync"
)

// EntryOverhead is what the cache charges per entry beyond the size its caller
// states: the list element, the map slot and a boxed key of a few words.
const EntryOverhead = 160

// Cache is a least-recently-used cache of at most Budget bytes. Its methods
// are safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu     sync.Mutex
	budget int64
	used   int64
	order  list.List // of *entry[K, V], most recently used first
	items  map[K]*list.Element
}

type entry[K comparable, V any] struct {
	key   K
	value V
	size  int64
}

// New returns an empty cache that holds at most budget bytes. A budget of 0
// or less caches nothing.
func New[K comparable, V any](budget int64) *Cache[K, V] {
	return &Cache[K, V]{budget: budget, items: map[K]*list.Element{}}
}

// Get returns the value cached for key and marks it used.
func (c *Cache[K, V]) Get(key K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*entry[K, V]).value, true
}

// Add caches value for key, replacing what key held, as an entry of size
// bytes (plus EntryOverhead), and drops the least recently used entries until
// the cache is within its budget. An entry larger than the whole budget is not
// kept (and key's old value is dropped); Add reports whether the value was
// kept.
func (c *Cache[K, V]) Add(key K, value V, size int64) bool {
	size = max(size, 0) + EntryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.remove(el)
	}
	if size > c.budget {
		return false
	}
	for c.used+size > c.budget {
		c.remove(c.order.Back())
	}
	c.items[key] = c.order.PushFront(&entry[K, V]{key, value, size})
	c.used += size
	return true
}

func (c *Cache[K, V]) remove(el *list.Element) {
	e := c.order.Remove(el).(*entry[K, V])
	delete(c.items, e.key)
	c.used -= e.size
}

// Len returns the number of entries.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// Bytes returns the bytes the entries are charged, EntryOverhead included.
func (c *Cache[K, V]) Bytes() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}
