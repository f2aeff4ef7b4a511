package qcow2

import (
	"bytes"
	"encoding/binary"
	"testing"

	"instarfs/internal/qemutest"
)

// TestSharedL2Runs walks an image whose L1 entries all name one L2 table, the
// shape a small hostile file takes to describe a huge disk. Extent remembers
// where the table's runs end instead of scanning the table for each L1 entry;
// every extent must still be what a fresh Image, with nothing remembered,
// says.
func TestSharedL2Runs(t *testing.T) {
	qemutest.NeedQemu(t)
	for _, opts := range [][]string{nil, {"extended_l2=on"}} {
		t.Run(fmtOpts(opts), func(t *testing.T) {
			base, l2 := hostileBase(t, opts...)
			const n = 64 // L1 entries
			img0, err := Open(bytes.NewReader(base), int64(len(base)))
			if err != nil {
				t.Fatal(err)
			}
			span := int64(img0.Header().L2Entries()) << img0.Header().ClusterBits
			cs := img0.ClusterSize()

			// A new L1 table at the end of the file, every entry naming the
			// L2 table; the virtual size its n entries map.
			b := bytes.Clone(base)
			l1 := (int64(len(b)) + cs - 1) &^ (cs - 1)
			b = append(b, make([]byte, l1+cs-int64(len(b)))...)
			for i := range int64(n) {
				binary.BigEndian.PutUint64(b[l1+8*i:], uint64(l2)|OflagCopied)
			}
			binary.BigEndian.PutUint64(b[40:], uint64(l1))
			binary.BigEndian.PutUint32(b[36:], n)
			binary.BigEndian.PutUint64(b[24:], uint64(n*span))

			img, err := Open(bytes.NewReader(b), int64(len(b)))
			if err != nil {
				t.Fatal(err)
			}
			extents := 0
			for off := int64(0); off < img.VirtualSize(); extents++ {
				e, err := img.Extent(off)
				if err != nil {
					t.Fatalf("Extent(%#x): %v", off, err)
				}
				fresh, err := Open(bytes.NewReader(b), int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				want, err := fresh.Extent(off)
				if err != nil {
					t.Fatalf("fresh Extent(%#x): %v", off, err)
				}
				if e != want {
					t.Fatalf("Extent(%#x) = %+v, a fresh image says %+v", off, e, want)
				}
				off = e.End()
			}
			if extents < 2*n {
				t.Errorf("%d extents over %d L1 entries", extents, n)
			}
			tab, err := img.ReadL2Table(int64(l2))
			if err != nil {
				t.Fatal(err)
			}
			img.mu.Lock()
			_, known := tab.run(0)
			img.mu.Unlock()
			if !known {
				t.Errorf("the run at the start of the shared table is not remembered")
			}
		})
	}
}

func fmtOpts(opts []string) string {
	if len(opts) == 0 {
		return "standard"
	}
	return opts[0]
}
