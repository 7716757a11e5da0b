package batchio

import (
	"errors"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
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

// TestClassifyRoutineErrorsAllocatesNothing is the regression test for
// Classify allocating (errors.As) on every empty read of a shard.
func TestClassifyRoutineErrorsAllocatesNothing(t *testing.T) {
	errs := []error{errRecvAgain, errSendAgain, errRecvRefused, errSendRefused}
	allocs := testing.AllocsPerRun(100, func() {
		for _, e := range errs {
			_ = Classify(e)
		}
	})
	if allocs != 0 {
		t.Fatalf("Classify allocates %.1f times per run", allocs)
	}
	if Classify(errRecvAgain) != KindWouldBlock || Classify(errSendRefused) != KindRefused {
		t.Fatal("boxed errors misclassified")
	}
}

// TestDialUpstreamAllocations bounds what opening an upstream socket
// allocates: the sockaddr for connect is built on the stack.
func TestDialUpstreamAllocations(t *testing.T) {
	backend := netip.MustParseAddrPort("127.0.0.1:9")
	allocs := testing.AllocsPerRun(50, func() {
		fd, err := DialUpstream(netip.AddrPort{}, backend, DialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	})
	if allocs > 0 {
		t.Fatalf("DialUpstream allocates %.1f times", allocs)
	}
}
