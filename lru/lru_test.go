package lru

import (
	"fmt"
	"reflect"
	"sort"
	"sync"
	"testing"
)

// keys returns the keys the cache holds, sorted.
func keys(c *Cache[string, int]) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for k := range c.items {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// op is one step of a scenario: add key with size, or get key.
type op struct {
	add  bool
	key  string
	size int64
}

func add(key string, size int64) op { return op{add: true, key: key, size: size} }
func get(key string) op             { return op{key: key} }

func TestCache(t *testing.T) {
	const o = EntryOverhead
	for _, tc := range []struct {
		name   string
		budget int64
		ops    []op
		want   []string // keys held at the end
	}{
		{"fits", 3 * (100 + o), []op{add("a", 100), add("b", 100), add("c", 100)}, []string{"a", "b", "c"}},
		{"oldest goes first", 3 * (100 + o), []op{add("a", 100), add("b", 100), add("c", 100), add("d", 100)}, []string{"b", "c", "d"}},
		{"a get makes an entry recent", 3 * (100 + o), []op{add("a", 100), add("b", 100), add("c", 100), get("a"), add("d", 100)}, []string{"a", "c", "d"}},
		{"a miss changes nothing", 2 * (100 + o), []op{add("a", 100), add("b", 100), get("x"), add("c", 100)}, []string{"b", "c"}},
		{"a big entry evicts several", 3 * (100 + o), []op{add("a", 100), add("b", 100), add("c", 100), add("d", 200+o)}, []string{"c", "d"}},
		{"replacing re-charges", 2 * (100 + o), []op{add("a", 100), add("b", 100), add("a", 100+o+100)}, []string{"a"}},
		{"an entry as large as the budget is kept", 1000 + o, []op{add("a", 1), add("b", 1000)}, []string{"b"}},
		{"an oversize entry is not kept", 1000, []op{add("a", 1), add("b", 1000)}, []string{"a"}},
		{"an oversize entry drops the key's old value", 1000, []op{add("a", 1), add("b", 1), add("a", 5000)}, []string{"b"}},
		{"a zero budget keeps nothing", 0, []op{add("a", 0)}, nil},
		{"a negative size counts as zero", 2 * o, []op{add("a", -100), add("b", -100), add("c", 0)}, []string{"b", "c"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := New[string, int](tc.budget)
			var want int64 // the sizes of the entries held, recomputed
			sizes := map[string]int64{}
			for i, op := range tc.ops {
				if op.add {
					kept := c.Add(op.key, i, op.size)
					if kept != (max(op.size, 0)+o <= tc.budget) {
						t.Errorf("Add(%q, %d) = %v with budget %d", op.key, op.size, kept, tc.budget)
					}
					sizes[op.key] = max(op.size, 0) + o
				} else if v, ok := c.Get(op.key); ok && tc.ops[v].key != op.key {
					t.Errorf("Get(%q) = value of step %d (%q)", op.key, v, tc.ops[v].key)
				}
				if c.Bytes() > tc.budget {
					t.Fatalf("after step %d: %d bytes in a cache of %d", i, c.Bytes(), tc.budget)
				}
			}
			got := keys(c)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("holds %q, want %q", got, tc.want)
			}
			for _, k := range got {
				want += sizes[k]
			}
			if c.Bytes() != want || c.Len() != len(got) {
				t.Errorf("Bytes() = %d, Len() = %d; the entries held sum to %d in %d entries", c.Bytes(), c.Len(), want, len(got))
			}
			for _, k := range tc.want {
				if _, ok := c.Get(k); !ok {
					t.Errorf("Get(%q) misses an entry the cache holds", k)
				}
			}
		})
	}
}

// TestCacheValues checks that Get returns what Add stored, the latest value
// for a replaced key.
func TestCacheValues(t *testing.T) {
	c := New[string, int](1 << 20)
	c.Add("a", 1, 10)
	c.Add("b", 2, 10)
	c.Add("a", 3, 10)
	for k, want := range map[string]int{"a": 3, "b": 2} {
		if v, ok := c.Get(k); !ok || v != want {
			t.Errorf("Get(%q) = %d, %v; want %d", k, v, ok, want)
		}
	}
}

// TestCacheConcurrent adds and gets from many goroutines: the budget holds
// throughout and the bookkeeping adds up at the end.
func TestCacheConcurrent(t *testing.T) {
	const budget = 50 * (64 + EntryOverhead)
	c := New[string, int](budget)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				k := fmt.Sprint((g*7 + i) % 97)
				if i%3 == 0 {
					c.Get(k)
				} else {
					c.Add(k, i, 64)
				}
				if b := c.Bytes(); b > budget {
					t.Errorf("%d bytes in a cache of %d", b, budget)
					return
				}
			}
		}()
	}
	wg.Wait()
	if c.Bytes() != int64(c.Len())*(64+EntryOverhead) || c.order.Len() != c.Len() {
		t.Errorf("Bytes() = %d for %d entries (%d in the list)", c.Bytes(), c.Len(), c.order.Len())
	}
}
