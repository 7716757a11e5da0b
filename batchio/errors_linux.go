package batchio

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// These errors end most Recv calls (EAGAIN) or are routine on upstream
// sockets (ECONNREFUSED), so they are boxed once: returning them must not
// allocate. They are never modified.
var (
	errRecvAgain   error = os.NewSyscallError("recvmmsg", unix.EAGAIN)
	errRecvRefused error = os.NewSyscallError("recvmmsg", unix.ECONNREFUSED)
	errSendAgain   error = os.NewSyscallError("sendmmsg", unix.EAGAIN)
	errSendRefused error = os.NewSyscallError("sendmmsg", unix.ECONNREFUSED)
	// errSendTooManyIovecs: a message with more than MaxIovecs pieces,
	// which sendmsg would refuse with EMSGSIZE; it is never handed to the
	// kernel.
	errSendTooManyIovecs error = os.NewSyscallError("sendmmsg", unix.EMSGSIZE)
)

// classifyBoxed recognises the pre-boxed errors by identity, which costs
// nothing; errors.As on them would allocate on every empty read.
func classifyBoxed(err error) (ErrorKind, bool) {
	switch err {
	case errRecvAgain, errSendAgain:
		return KindWouldBlock, true
	case errRecvRefused, errSendRefused:
		return KindRefused, true
	}
	return KindOther, false
}

// recvError wraps an errno from recvmmsg, allocating only for rare errnos.
func recvError(e unix.Errno) error {
	switch e {
	case unix.EAGAIN:
		return errRecvAgain
	case unix.ECONNREFUSED:
		return errRecvRefused
	}
	return os.NewSyscallError("recvmmsg", e)
}

// sendError wraps an errno from sendmmsg, allocating only for rare errnos.
func sendError(e unix.Errno) error {
	switch e {
	case unix.EAGAIN:
		return errSendAgain
	case unix.ECONNREFUSED:
		return errSendRefused
	}
	return os.NewSyscallError("sendmmsg", e)
}

func classifyErrno(err error) ErrorKind {
	e, ok := errors.AsType[unix.Errno](err)
	if !ok {
		return KindOther
	}
	switch e {
	case unix.EAGAIN: // == EWOULDBLOCK on Linux
		return KindWouldBlock
	case unix.ECONNREFUSED:
		return KindRefused
	case unix.EBADF, unix.ENOTSOCK:
		return KindClosed
	}
	return KindOther
}

// IsGSOError reports whether err, returned by [Batch.Send] for a message
// with SegmentSize set, means the kernel or device refused segmentation
// offload rather than the datagrams themselves. The caller should resend
// that message as separate datagrams and stop using GSO on that socket or
// path. The errnos come from udp_send_skb (net/ipv4/udp.c): EINVAL (too
// many segments, SO_NO_CHECK, some IPv6 drivers), EMSGSIZE (segment plus
// headers above the path MTU) and EIO (no TX checksum offload before 6.11,
// UDP-Lite, xfrm routes).
func IsGSOError(err error) bool {
	var e unix.Errno
	if !errors.As(err, &e) {
		return false
	}
	return e == unix.EINVAL || e == unix.EMSGSIZE || e == unix.EIO
}
