package batchio

import (
	"io"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr mirrors the kernel's struct mmsghdr (include/linux/socket.h);
// x/sys/unix does not define it.
//
//	struct mmsghdr {
//		struct user_msghdr msg_hdr; // 56 bytes on 64-bit, 28 on 32-bit
//		unsigned int       msg_len; // bytes received or sent
//	};                              // 64 bytes on 64-bit, 32 on 32-bit
//
// Go pads the struct to its pointer alignment just as C does, so no
// explicit padding is needed (a test checks the size).
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// Batch holds the fixed arrays one recvmmsg or sendmmsg call needs:
// message headers, iovecs, socket addresses and control buffers. They are
// allocated once by [NewBatch], so [Batch.Recv] and [Batch.Send] allocate
// nothing in steady state.
//
// A Batch is not safe for concurrent use: give each shard loop its own.
// One Batch may serve any number of sockets, one call at a time.
type Batch struct {
	hdrs []mmsghdr
	// iovs: one per message on receive; on send Header, Buf and Gather
	// pieces take what they need, up to 2 per message plus [MaxIovecs]
	// spare, so the largest message always fits in a call of its own.
	iovs    []unix.Iovec
	names   [][sockaddrLen]byte // msg_name storage
	ctrl    []byte              // ctrlLen bytes per message
	ctrlLen int

	drops    uint32 // SO_RXQ_OVFL value seen by the last Recv
	hasDrops bool

	calls SyscallCounts
}

// SyscallCounts are the system calls a [Batch] has made.
type SyscallCounts struct {
	Recvmmsg, Sendmmsg uint64
}

// Syscalls returns the recvmmsg and sendmmsg calls made so far (EINTR
// retries included), for syscalls-per-byte figures.
func (b *Batch) Syscalls() SyscallCounts { return b.calls }

// NewBatch returns a Batch that moves up to size messages per system call.
// A size of 0 or less means [DefaultBatchSize]; sizes above [MaxBatchSize]
// are clamped.
func NewBatch(size int) *Batch {
	return newBatch(size, max(recvControlLen, sendControlLen))
}

// newBatch lets tests choose a control buffer too small on purpose.
func newBatch(size, ctrlLen int) *Batch {
	if size <= 0 {
		size = DefaultBatchSize
	}
	size = min(size, MaxBatchSize)
	ctrlLen = cmsgAlign(max(ctrlLen, 1))
	return &Batch{
		hdrs:    make([]mmsghdr, size),
		iovs:    make([]unix.Iovec, 2*size+MaxIovecs),
		names:   make([][sockaddrLen]byte, size),
		ctrl:    make([]byte, size*ctrlLen),
		ctrlLen: ctrlLen,
	}
}

// Size returns the number of messages one system call can carry.
func (b *Batch) Size() int { return len(b.hdrs) }

// Drops returns the kernel's drop counter for the socket of the most recent
// Recv call: the cumulative count of datagrams it dropped (mostly because
// the receive buffer was full), from the SO_RXQ_OVFL control message that
// [ListenUDP] and [DialUpstream] enable. ok is false when that call saw no
// such message, which is normal: the kernel attaches it only once the
// counter is non-zero (sock_recv_drops, include/net/sock.h).
func (b *Batch) Drops() (count uint32, ok bool) { return b.drops, b.hasDrops }

// Recv reads up to min(len(msgs), b.Size()) datagrams from the non-blocking
// socket fd with one recvmmsg call and returns how many it read. For each
// msgs[i], i < n, it sets N, Addr, Local, IfIndex, TOS, SegmentSize and
// Flags; Buf must be set by the caller and is filled, Header is ignored.
// Messages with FlagTruncated or FlagControlTruncated must be dropped.
//
// Recv never blocks (MSG_DONTWAIT). When nothing is queued it returns
// 0 and an error that matches unix.EAGAIN (see [Classify]); on a connected
// socket a pending ICMP error is returned as ECONNREFUSED. EINTR is retried.
// Errors are *os.SyscallError; the common ones do not allocate.
func (b *Batch) Recv(fd int, msgs []Message) (int, error) {
	n := min(len(msgs), len(b.hdrs))
	b.drops, b.hasDrops = 0, false
	if n == 0 {
		return 0, nil
	}
	for i := range n {
		iov := &b.iovs[i]
		iov.Base = unsafe.SliceData(msgs[i].Buf)
		iov.SetLen(len(msgs[i].Buf))
		h := &b.hdrs[i]
		h.hdr = unix.Msghdr{
			Name:    &b.names[i][0],
			Namelen: sockaddrLen,
			Iov:     iov,
			Control: &b.ctrl[i*b.ctrlLen],
		}
		h.hdr.SetIovlen(1)
		h.hdr.SetControllen(b.ctrlLen)
		h.n = 0
	}
	got, e := b.mmsg(unix.SYS_RECVMMSG, fd, n)
	b.releaseIovecs(n)
	if e != 0 {
		return 0, recvError(e)
	}
	for i := range got {
		h, m := &b.hdrs[i], &msgs[i]
		m.N = int(h.n)
		m.Addr = parseSockaddr(&b.names[i], h.hdr.Namelen)
		m.Local, m.IfIndex, m.TOS, m.SegmentSize, m.Flags = netip.Addr{}, 0, 0, 0, 0
		if h.hdr.Flags&unix.MSG_TRUNC != 0 {
			m.Flags |= FlagTruncated
		}
		if h.hdr.Flags&unix.MSG_CTRUNC != 0 {
			m.Flags |= FlagControlTruncated
		}
		off := i * b.ctrlLen
		cl := min(int(h.hdr.Controllen), b.ctrlLen)
		if ri := parseControl(b.ctrl[off:off+cl], m); ri.hasDrops {
			b.drops, b.hasDrops = ri.drops, true
		}
	}
	return got, nil
}

// Send sends every message in msgs on the non-blocking socket fd, in
// sendmmsg calls of up to b.Size() messages (fewer when Gather pieces use
// up the batch's iovecs), and returns how many were sent. See [Message] for the fields it uses.
//
// If err is nil, n == len(msgs). Otherwise msgs[:n] were sent, msgs[n:]
// were not, and err says why msgs[n] could not be: check err before n.
// sendmmsg stops at the first failing message and reports the error only
// if it sent nothing, so Send simply calls again after a short count; a
// failure is therefore always tied to msgs[n]. What to do next depends on
// [Classify]: KindWouldBlock (send buffer full): wait or drop msgs[n:];
// KindRefused (a pending ICMP error on a connected socket, which consumed
// msgs[n]) or KindOther: count and drop msgs[n] and call Send again with
// msgs[n+1:]; KindClosed: stop. For a message with SegmentSize set, see
// also [IsGSOError].
//
// Send never blocks (MSG_DONTWAIT) and retries EINTR. Errors are
// *os.SyscallError; the common ones do not allocate.
func (b *Batch) Send(fd int, msgs []Message) (int, error) {
	sent := 0
	for sent < len(msgs) {
		// Rebuild every header from msgs on each call: after a short
		// count the next call starts at a different message.
		n, used := 0, 0
		for n < min(len(msgs)-sent, len(b.hdrs)) {
			m := &msgs[sent+n]
			need := iovecsOf(m)
			if need > MaxIovecs {
				if n == 0 {
					return sent, errSendTooManyIovecs
				}
				break
			}
			if used+need > len(b.iovs) {
				break
			}
			b.prepareSend(n, m, b.iovs[used:used+need])
			used += need
			n++
		}
		got, e := b.mmsg(unix.SYS_SENDMMSG, fd, n)
		b.releaseIovecs(used)
		if e != 0 {
			return sent, sendError(e)
		}
		if got == 0 {
			// The kernel returns 0 only for vlen 0; never loop forever.
			return sent, io.ErrNoProgress
		}
		sent += got
	}
	return sent, nil
}

// iovecsOf returns the iovecs m needs: one per non-empty piece, at least
// one (an empty datagram still takes an iovec).
func iovecsOf(m *Message) int {
	n := 0
	if len(m.Header) > 0 {
		n++
	}
	if len(m.Buf) > 0 {
		n++
	}
	for _, p := range m.Gather {
		if len(p) > 0 {
			n++
		}
	}
	return max(n, 1)
}

// prepareSend fills header i for m, with its pieces in iov (len(iov) ==
// iovecsOf(m)).
func (b *Batch) prepareSend(i int, m *Message, iov []unix.Iovec) {
	niov := putIovec(iov, 0, m.Header)
	niov = putIovec(iov, niov, m.Buf)
	for _, p := range m.Gather {
		niov = putIovec(iov, niov, p)
	}
	if niov == 0 { // an empty datagram
		iov[0].Base = nil
		iov[0].SetLen(0)
		niov = 1
	}

	h := &b.hdrs[i]
	h.hdr = unix.Msghdr{Iov: &iov[0]}
	h.hdr.SetIovlen(niov)
	h.n = 0
	if m.Addr.IsValid() {
		h.hdr.Name = &b.names[i][0]
		h.hdr.Namelen = putSockaddr(&b.names[i], m.Addr)
	}
	off := i * b.ctrlLen
	if cl := putControl(b.ctrl[off:off+b.ctrlLen], m); cl > 0 {
		h.hdr.Control = &b.ctrl[off]
		h.hdr.SetControllen(cl)
	}
}

// putIovec points iov[n] at p unless p is empty and returns the iovecs
// used.
func putIovec(iov []unix.Iovec, n int, p []byte) int {
	if len(p) == 0 {
		return n
	}
	iov[n].Base = unsafe.SliceData(p)
	iov[n].SetLen(len(p))
	return n + 1
}

// mmsg runs recvmmsg or sendmmsg on the first n headers, retrying EINTR.
//
// unix.Syscall6 (not RawSyscall6) tells the scheduler we are in a system
// call: with MSG_DONTWAIT it does not block, but copying 64 datagrams of
// 64 KiB can take a while.
func (b *Batch) mmsg(trap uintptr, fd, n int) (int, unix.Errno) {
	for {
		if trap == unix.SYS_RECVMMSG {
			b.calls.Recvmmsg++
		} else {
			b.calls.Sendmmsg++
		}
		r, _, e := unix.Syscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b.hdrs[0])),
			uintptr(n), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(r), 0
	}
}

// releaseIovecs drops the iovecs' references to the caller's buffers, so a
// Batch never keeps them alive or reachable after a call returns.
func (b *Batch) releaseIovecs(n int) {
	for i := range b.iovs[:n] {
		b.iovs[i].Base = nil
	}
}
