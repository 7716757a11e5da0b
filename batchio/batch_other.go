//go:build !linux

package batchio

// Batch would hold the fixed arrays for batched socket I/O. recvmmsg and
// sendmmsg exist only on Linux, so here every call fails with
// [ErrNotSupported].
type Batch struct {
	size int
}

// NewBatch returns a Batch whose calls all fail with [ErrNotSupported].
func NewBatch(size int) *Batch {
	if size <= 0 {
		size = DefaultBatchSize
	}
	return &Batch{size: min(size, MaxBatchSize)}
}

// Size returns the number of messages one call could carry.
func (b *Batch) Size() int { return b.size }

// SyscallCounts are the system calls a [Batch] has made.
type SyscallCounts struct {
	Recvmmsg, Sendmmsg uint64
}

// Syscalls returns zero counts: no call is ever made here.
func (b *Batch) Syscalls() SyscallCounts { return SyscallCounts{} }

// Drops reports no kernel drop counter: it exists only on Linux.
func (b *Batch) Drops() (count uint32, ok bool) { return 0, false }

// Recv returns [ErrNotSupported].
func (b *Batch) Recv(fd int, msgs []Message) (int, error) { return 0, ErrNotSupported }

// Send returns [ErrNotSupported].
func (b *Batch) Send(fd int, msgs []Message) (int, error) { return 0, ErrNotSupported }
