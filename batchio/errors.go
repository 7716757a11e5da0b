package batchio

import (
	"errors"
	"net"
	"os"
)

// ErrNotSupported is returned by every function on systems other than Linux.
var ErrNotSupported = errors.New("batchio: not supported on this platform")

// ErrorKind tells a shard loop what to do with an error from [Batch.Recv],
// [Batch.Send] or a socket helper.
type ErrorKind uint8

const (
	// KindOther is any other failure. On Send it concerns the message at
	// index n (for example EMSGSIZE, EPERM from a firewall, ENETUNREACH):
	// count and drop that message and go on with the next.
	KindOther ErrorKind = iota
	// KindWouldBlock (EAGAIN) means the receive queue is drained or the
	// send buffer is full: wait for readiness.
	KindWouldBlock
	// KindRefused (ECONNREFUSED) is an ICMP port-unreachable reported on a
	// connected socket by the call after the send that caused it. If it
	// came from Send, the message at index n was not sent. Count and drop
	// it (or retry it once) and treat it as an upstream health signal; the
	// socket stays usable.
	KindRefused
	// KindClosed means the descriptor is closed or invalid (EBADF,
	// ENOTSOCK, or net.ErrClosed / os.ErrClosed): stop using it.
	KindClosed
)

// String returns the kind's name.
func (k ErrorKind) String() string {
	switch k {
	case KindWouldBlock:
		return "would-block"
	case KindRefused:
		return "refused"
	case KindClosed:
		return "closed"
	default:
		return "other"
	}
}

// Classify sorts err into an [ErrorKind]. It looks through wrapping, so it
// works on the errors this package returns and on errors from package net.
// A nil err is KindOther; callers check err != nil first.
func Classify(err error) ErrorKind {
	if k, ok := classifyBoxed(err); ok {
		return k // the routine errors, without the allocations of errors.As
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return KindClosed
	}
	return classifyErrno(err)
}
