// Package scratch lends the worker buffers that live for one read: a header,
// a table or the first bytes of an image, read, decoded and dropped.
//
// A worker is a fresh process, and every page of new memory it touches costs
// a page fault: about 2 µs each on a virtual machine, where a commit's worker
// took some 900 of them for its reads. Buffers given back are lent again
// instead, their pages already in place.
package scratch

import "sync"

var pool sync.Pool // of *[]byte

// Get returns a buffer of n bytes. Its contents are whatever its last
// borrower left: the caller must overwrite what it reads.
func Get(n int) []byte {
	if p, ok := pool.Get().(*[]byte); ok {
		if cap(*p) >= n {
			return (*p)[:n]
		}
		pool.Put(p)
	}
	return make([]byte, n)
}

// Put gives b back. The caller must not use b, or anything that aliases it,
// afterwards.
func Put(b []byte) {
	pool.Put(&b)
}
