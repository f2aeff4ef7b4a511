package scratch

import "testing"

func TestGetPut(t *testing.T) {
	b := Get(100)
	if len(b) != 100 {
		t.Fatalf("Get(100) is %d bytes", len(b))
	}
	// A buffer given back is lent again for a size it holds (sync.Pool may
	// drop one now and then: the race detector makes it), and a larger
	// request gets its own.
	reused := false
	for range 10 {
		Put(b)
		c := Get(60)
		if len(c) != 60 {
			t.Fatalf("Get(60) is %d bytes", len(c))
		}
		if &c[0] == &b[0] {
			reused = true
			break
		}
		b = c[:cap(c)]
	}
	if !reused {
		t.Error("no buffer given back was lent again")
	}
	if d := Get(1 << 20); len(d) != 1<<20 {
		t.Errorf("Get(1 MiB) is %d bytes", len(d))
	}
}
