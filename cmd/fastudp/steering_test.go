package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot skips a test that needs CAP_BPF unless it runs as root; under
// CI=true, which runs as root, it fails instead.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("CI=true: this test loads a BPF program and must run as root")
	}
	t.Skip("needs root (CAP_BPF)")
}

// steeringEcho answers every datagram with "echo:" + payload.
func steeringEcho(t *testing.T) string { return namedEcho(t, "echo").String() }

// startWithoutBPFCaps starts cmd from a thread whose capability bounding set
// lacks CAP_BPF and CAP_SYS_ADMIN. The child inherits the thread's bounding
// set, and exec gives root only the bounded capabilities. The thread is
// never unlocked, so it ends with the goroutine.
func startWithoutBPFCaps(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		for _, c := range []uintptr{unix.CAP_BPF, unix.CAP_SYS_ADMIN} {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
				errc <- fmt.Errorf("PR_CAPBSET_DROP %d: %w", c, err)
				return
			}
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// runSteered runs `fastudp run` with args in front of an echo backend,
// checks round trips through it, scrapes its metrics, stops it with SIGTERM
// and returns its standard error and the metrics text.
func runSteered(t *testing.T, start func(*exec.Cmd) error, args ...string) (stderr, metrics string) {
	t.Helper()
	backend := steeringEcho(t)
	front := freeUDPPort(t)
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ml.Addr().String()
	ml.Close()
	args = append([]string{"run", "--listen", front, "--backend", backend, "--responses", "1", "--shards", "2", "--metrics", maddr}, args...)
	cmd := exec.Command(fastudpBin, args...)
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	if err := start(cmd); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
			t.Logf("stderr:\n%s", &errBuf)
		}
	}()
	for i := range 20 {
		c, err := net.Dial("udp", front)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("echo:q%d", i)
		deadline := time.Now().Add(10 * time.Second)
		buf := make([]byte, 100)
		for {
			_, _ = c.Write([]byte(want[len("echo:"):]))
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if err == nil {
				if got := string(buf[:n]); got != want {
					t.Fatalf("reply %q, want %q", got, want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no reply through the proxy")
			}
		}
		c.Close()
	}
	resp, err := http.Get("http://" + maddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		stopped = true
		if err != nil {
			t.Fatalf("exit: %v; stderr:\n%s", err, &errBuf)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	return errBuf.String(), string(body)
}

// TestRunSteeringHash runs the binary with eBPF hash steering: it logs the
// mode in force and exports it.
func TestRunSteeringHash(t *testing.T) {
	requireRoot(t)
	stderr, metrics := runSteered(t, (*exec.Cmd).Start, "--steering", "hash", "--steering-key", "ip")
	if !strings.Contains(stderr, "msg=steering mode=hash key=ip active=hash") {
		t.Errorf("no steering line in the log:\n%s", stderr)
	}
	for _, want := range []string{
		`fastudp_steering_info{active="hash",key="ip",mode="hash"} 1`,
		`fastudp_steering_datagrams_total{listener="default",result="no_socket"} 0`,
		`fastudp_steering_fallbacks_total{reason="no_permission"} 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "steering"))
		}
	}
	// The client's first tries may reach the sockets before the program
	// is attached (they are bound first), or before they are bound at all.
	var selected int
	if _, err := fmt.Sscanf(grepLines(metrics, `result="selected"`), `fastudp_steering_datagrams_total{listener="default",result="selected"} %d`, &selected); err != nil || selected < 15 || selected > 20 {
		t.Errorf("selected datagrams %d (%v), want 15..20:\n%s", selected, err, grepLines(metrics, "steering"))
	}
}

// TestRunSteeringWithoutCapBPF starts the binary without CAP_BPF and
// CAP_SYS_ADMIN and asks for hash steering: it serves anyway, on the
// kernel's hash, with a warning naming the capability and the fallback.
func TestRunSteeringWithoutCapBPF(t *testing.T) {
	requireRoot(t)
	stderr, metrics := runSteered(t, startWithoutBPFCaps, "--steering", "hash")
	for _, want := range []string{"level=WARN", "missing capability CAP_BPF", "falling back to the kernel's SO_REUSEPORT hash", "active=kernel"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("log lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "MEMLOCK") {
		t.Errorf("log repeats cilium/ebpf's misleading MEMLOCK hint:\n%s", stderr)
	}
	for _, want := range []string{
		`fastudp_steering_info{active="kernel",key="flow",mode="hash"} 1`,
		`fastudp_steering_fallbacks_total{reason="no_permission"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q:\n%s", want, grepLines(metrics, "steering"))
		}
	}
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
