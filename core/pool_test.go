package core

import (
	"testing"
	"unsafe"
)

func TestSlicePoolGet(t *testing.T) {
	tests := []struct {
		name string
		n    int
		cap  int // 0: nil
	}{
		{"zero", 0, 256},
		{"one", 1, 256},
		{"smallest class", 256, 256},
		{"just over", 257, 512},
		{"DNS", 512, 512},
		{"MTU", 1500, 2048},
		{"default max rx", DefaultMaxRxDatagramSize, 4096},
		{"largest datagram", MaxDatagramSize, 65536},
		{"largest class", 65536, 65536},
		{"too large", 65537, 0},
		{"negative", -1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewSlicePool(2)
			b := p.Get(tc.n)
			if tc.cap == 0 {
				if b != nil {
					t.Fatalf("Get(%d) = cap %d, want nil", tc.n, cap(b))
				}
				return
			}
			if len(b) != 0 || cap(b) != tc.cap {
				t.Fatalf("Get(%d): len %d cap %d, want 0, %d", tc.n, len(b), cap(b), tc.cap)
			}
		})
	}
}

func TestSlicePoolReuse(t *testing.T) {
	p := NewSlicePool(2)
	a, b, c := p.Get(300), p.Get(300), p.Get(300)
	for _, x := range [][]byte{a, b, c} {
		p.Put(append(x, "dirty"...))
	}
	if len(p.free[1]) != 2 {
		t.Fatalf("kept %d buffers, want the per-size limit 2", len(p.free[1]))
	}
	got := map[*byte]bool{}
	for i := 0; i < 2; i++ {
		x := p.Get(400)
		if len(x) != 0 || cap(x) != 512 {
			t.Fatalf("reused buffer len %d cap %d", len(x), cap(x))
		}
		got[unsafe.SliceData(x)] = true
	}
	if !got[unsafe.SliceData(a)] || !got[unsafe.SliceData(b)] {
		t.Fatal("Get did not reuse the freed buffers")
	}
	// Buffers of other capacities are left to the GC.
	p.Put(make([]byte, 0, 300))
	p.Put(make([]byte, 0, 1<<17))
	p.Put(nil)
	for c, free := range p.free {
		if len(free) != 0 {
			t.Fatalf("class %d kept a foreign buffer", c)
		}
	}
	if q := NewSlicePool(0); q.perSize != 1 {
		t.Fatalf("perSize %d for 0", q.perSize)
	}
	if poolClass(256) != 0 || poolClass(257) != 1 || poolClass(65536) != numPoolClasses-1 {
		t.Fatal("poolClass boundaries")
	}
}
