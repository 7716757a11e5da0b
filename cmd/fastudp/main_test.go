package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// binary is the fastudp binary built once for tests that run it as a user
// would (signals, exit status).
var fastudpBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing (the coordinator and each worker run TestMain): the fuzz
		// targets run no binary, and building one per worker restart
		// stalled the run for seconds each time.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "fastudp-test")
	if err != nil {
		panic(err)
	}
	fastudpBin = filepath.Join(dir, "fastudp")
	if out, err := exec.Command("go", "build", "-o", fastudpBin, ".").CombinedOutput(); err != nil {
		panic("go build: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestDemo runs `fastudp demo --duration 2s` and checks it succeeds and
// every backend served a non-zero share.
func TestDemo(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := runMain([]string{"demo", "--duration", "2s"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, &stdout, &stderr)
	}
	total := regexp.MustCompile(`total: (\d+) sent, (\d+) replies.*`).FindStringSubmatch(stdout.String())
	if total == nil {
		t.Fatalf("no total line:\n%s", &stdout)
	}
	if n, _ := strconv.Atoi(total[2]); n == 0 {
		t.Fatalf("no replies:\n%s", &stdout)
	}
	for _, name := range []string{"echo1", "echo2"} {
		m := regexp.MustCompile(name + ` ([0-9.]+)%`).FindStringSubmatch(total[0])
		if m == nil {
			t.Fatalf("no share for %s in %q", name, total[0])
		}
		if v, _ := strconv.ParseFloat(m[1], 64); v <= 0 {
			t.Fatalf("%s share %s%%: %s", name, m[1], total[0])
		}
	}
}

func TestInvalidConfigExitsTwo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.toml")
	src := "[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:53\"\ncluster = \"c\"\n\n[[cluster]]\nname = \"c\"\nfront_timeout = \"30x\"\n  [[cluster.backend]]\n  address = \"127.0.0.1:54\"\n"
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"file", []string{"run", "--config", path}, "bad.toml:8:"},
		{"flag", []string{"run", "--listen", "127.0.0.1:0", "--backend", "nonsense"}, `--backend`},
		{"nothing", []string{"run"}, "--config"},
		{"both", []string{"run", "--config", path, "--listen", "127.0.0.1:0"}, "cannot be combined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := runMain(tt.args, &stdout, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, &stderr)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q does not mention %q", stderr.String(), tt.want)
			}
		})
	}
}

// TestRunQuickStartAndSIGTERM runs the binary in quick-start mode in front of
// an echo backend, checks a round trip, then stops it with SIGTERM and
// expects exit status 0.
func TestRunQuickStartAndSIGTERM(t *testing.T) {
	backend := namedEcho(t, "echo")
	front := freeUDPPort(t)
	cmd := exec.Command(fastudpBin, "run", "--listen", front, "--backend", backend.String(), "--responses", "1", "--shards", "2")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	c, err := net.Dial("udp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _ = c.Write([]byte("hello"))
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			if got := string(buf[:n]); got != "echo:hello" {
				t.Fatalf("reply %q", got)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reply through the proxy; stderr:\n%s", &stderr)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v; stderr:\n%s", err, &stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no exit after SIGTERM; stderr:\n%s", &stderr)
	}
}

func freeUDPPort(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freeTCPAndUDPPort(t))
}
