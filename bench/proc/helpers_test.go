package proc

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

func gettid() int { return syscall.Gettid() }

// execSleep starts a child that sleeps, stopped at the end of the test, and
// returns its pid.
func execSleep(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

// rusage returns user+system time of the calling thread or the process.
func rusage(thread bool) time.Duration {
	who := syscall.RUSAGE_SELF
	if thread {
		who = 1 // RUSAGE_THREAD
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
