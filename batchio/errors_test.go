package batchio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want ErrorKind
	}{
		{"nil", nil, KindOther},
		{"EAGAIN", os.NewSyscallError("recvmmsg", syscall.EAGAIN), KindWouldBlock},
		{"wrapped EAGAIN", fmt.Errorf("shard 1: %w", os.NewSyscallError("recvmmsg", syscall.EAGAIN)), KindWouldBlock},
		{"ECONNREFUSED", os.NewSyscallError("sendmmsg", syscall.ECONNREFUSED), KindRefused},
		{"EBADF", os.NewSyscallError("sendmmsg", syscall.EBADF), KindClosed},
		{"net.ErrClosed", fmt.Errorf("read: %w", net.ErrClosed), KindClosed},
		{"os.ErrClosed", os.ErrClosed, KindClosed},
		{"EMSGSIZE", os.NewSyscallError("sendmmsg", syscall.EMSGSIZE), KindOther},
		{"plain", errors.New("boom"), KindOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Classify(tc.err); got != tc.want {
				t.Errorf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
