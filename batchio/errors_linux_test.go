package batchio

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

func TestIsGSOError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{os.NewSyscallError("sendmmsg", syscall.EIO), true},
		{os.NewSyscallError("sendmmsg", syscall.EINVAL), true},
		{os.NewSyscallError("sendmmsg", syscall.EMSGSIZE), true},
		{os.NewSyscallError("sendmmsg", syscall.ECONNREFUSED), false},
		{errors.New("EIO"), false},
		{nil, false},
	} {
		if got := IsGSOError(tc.err); got != tc.want {
			t.Errorf("IsGSOError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestErrorsBoxedOnce checks that the hot-path errors are the shared
// values, so returning them does not allocate.
func TestErrorsBoxedOnce(t *testing.T) {
	if recvError(syscall.EAGAIN) != errRecvAgain || sendError(syscall.ECONNREFUSED) != errSendRefused {
		t.Error("EAGAIN/ECONNREFUSED not preboxed")
	}
	if a := testing.AllocsPerRun(10, func() { _ = sendError(syscall.EAGAIN) }); a != 0 {
		t.Errorf("sendError(EAGAIN) allocates %v", a)
	}
}
