package core

import "math/bits"

// BufferPool supplies the buffers a [Manager] holds datagrams in across calls
// (a new flow's datagrams while its backend is resolved). It is owned by the
// shard and never used concurrently.
type BufferPool interface {
	// Get returns a buffer with capacity of at least n bytes, or nil when the
	// pool is exhausted (the datagram is then dropped and counted).
	Get(n int) []byte
	// Put returns a buffer obtained from Get.
	Put(b []byte)
}

// SlicePool is a [BufferPool] of power-of-two size classes from 256 bytes to
// 64 KiB. Freed buffers are kept for reuse, at most a fixed number per class,
// so after warm-up Get allocates nothing. It is not safe for concurrent use.
type SlicePool struct {
	free    [numPoolClasses][][]byte
	perSize int
}

const (
	minPoolClassShift = 8  // 256 B
	maxPoolClassShift = 16 // 64 KiB
	numPoolClasses    = maxPoolClassShift - minPoolClassShift + 1
)

var _ BufferPool = (*SlicePool)(nil)

// NewSlicePool returns a pool that keeps up to perSize free buffers of each
// size class.
func NewSlicePool(perSize int) *SlicePool {
	if perSize < 1 {
		perSize = 1
	}
	return &SlicePool{perSize: perSize}
}

func poolClass(n int) int {
	if n <= 1<<minPoolClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minPoolClassShift
}

// Get returns a buffer of capacity at least n, or nil if n exceeds 64 KiB.
func (p *SlicePool) Get(n int) []byte {
	c := poolClass(n)
	if c >= numPoolClasses || n < 0 {
		return nil
	}
	if l := len(p.free[c]); l > 0 {
		b := p.free[c][l-1]
		p.free[c][l-1] = nil
		p.free[c] = p.free[c][:l-1]
		return b[:0]
	}
	return make([]byte, 0, 1<<(c+minPoolClassShift))
}

// Put keeps b for reuse if its class has room; buffers of other capacities are
// left to the garbage collector.
func (p *SlicePool) Put(b []byte) {
	c := poolClass(cap(b))
	if c >= numPoolClasses || cap(b) != 1<<(c+minPoolClassShift) || len(p.free[c]) >= p.perSize {
		return
	}
	p.free[c] = append(p.free[c], b[:0])
}
