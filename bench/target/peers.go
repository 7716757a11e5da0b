package target

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fastudp/fastudp/bench/proc"
)

// Checker is implemented by targets and backends that need software
// outside the module: Check returns nil when it is there, or an error
// wrapping [ErrMissing] that names the apt package.
type Checker interface {
	Check() error
}

// Floor runs one of bench/floor's minimal forwarders as a process of its
// own: Command is how to run the fastudp binary's `bench floor`
// subcommand (for example {"/usr/local/bin/fastudp", "bench", "floor"}).
type Floor struct {
	Command []string
	// DNS selects the DNS forwarder (one upstream socket, rewritten IDs)
	// instead of the opaque relay.
	DNS bool
}

// Name implements Target.
func (f Floor) Name() string { return "floor" }

// Start implements Target.
func (f Floor) Start(backend netip.AddrPort, m Mode) (*Instance, error) {
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	addr := netip.AddrPortFrom(loopback, port)
	kind := "relay"
	if f.DNS {
		kind = "dns"
	}
	args := append(append([]string{}, f.Command[1:]...), kind, "--listen", addr.String(),
		"--backend", backend.String(), "--responses", strconv.Itoa(m.Responses))
	return startProcess("floor", f.Command[0], args, addr, m)
}

// startProcess runs a target binary in its own process group and waits
// until it answers the mode's probe.
func startProcess(name, bin string, args []string, addr netip.AddrPort, m Mode) (*Instance, error) {
	cmd := exec.Command(bin, args...)
	var out limitedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	inst := &Instance{Addr: addr, PID: cmd.Process.Pid}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	inst.stop = func() error {
		kids, _ := proc.Descendants(inst.PID)        // socat's forks
		_ = syscall.Kill(-inst.PID, syscall.SIGKILL) // the whole process group
		<-exited
		return waitGone(kids)
	}
	if err := WaitReply(addr, m.probe(), startTimeout); err != nil {
		inst.Stop()
		return nil, fmt.Errorf("%s %s: %w; output: %s", name, strings.Join(args, " "), err, out.String())
	}
	return inst, nil
}

// waitGone waits up to 2 s for the processes to exit (SIGKILL is
// delivered asynchronously).
func waitGone(pids []int) error {
	for end := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left := 0
		for _, p := range pids {
			if alive(p) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%d processes survived SIGKILL", left)
		}
	}
}

// runScript runs a peer start script that prints the PID of the process it
// started under setsid, and returns that PID.
func runScript(script string, args ...string) (int, error) {
	cmd := exec.Command("bash", append([]string{script}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("%s: %w: %s", script, err, stderr.String())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s printed %q, want a PID", script, out)
	}
	return pid, nil
}

// startScript starts a peer through its script (LISTEN_PORT BACKEND_PORT
// [extra...]) and waits until it answers; confFlag and dirPrefix find the
// script's temporary directory, removed on Stop.
func startScript(name, script string, backend netip.AddrPort, m Mode, confFlag, dirPrefix string, extra ...string) (*Instance, error) {
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	pid, err := runScript(script, append([]string{strconv.Itoa(int(port)), strconv.Itoa(int(backend.Port()))}, extra...)...)
	if err != nil {
		return nil, err
	}
	inst := &Instance{Addr: netip.AddrPortFrom(loopback, port), PID: pid}
	dir := scriptDir(pid, confFlag, dirPrefix)
	inst.stop = func() error {
		err := stopGroup(pid)
		if dir != "" {
			os.RemoveAll(dir)
		}
		return err
	}
	if err := WaitReply(inst.Addr, m.probe(), startTimeout); err != nil {
		inst.Stop()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return inst, nil
}

func checkScript(script string) error {
	if _, err := os.Stat(script); err != nil {
		return fmt.Errorf("start script: %w", err)
	}
	return nil
}

// Dnsdist runs dnsdist through the peers' start-dnsdist.sh (LISTEN_PORT
// BACKEND_PORT): one listener, one backend, no cache. It forwards DNS
// only, so the mode's probe must be a DNS query.
type Dnsdist struct {
	Script string
}

// Name implements Target.
func (Dnsdist) Name() string { return "dnsdist" }

// Check implements Checker.
func (d Dnsdist) Check() error {
	if err := checkScript(d.Script); err != nil {
		return fmt.Errorf("dnsdist %w", err)
	}
	return lookPath("dnsdist", "dnsdist")
}

// Start implements Target.
func (d Dnsdist) Start(backend netip.AddrPort, m Mode) (*Instance, error) {
	if err := d.Check(); err != nil {
		return nil, err
	}
	return startScript("dnsdist", d.Script, backend, m, "-C", "/tmp/peer-dnsdist.")
}

// Socat runs `socat UDP4-LISTEN:PORT,fork,reuseaddr UDP4:BACKEND`: a
// child process per client address, each relaying until it has been idle
// for Idle seconds (socat -T; default 5).
type Socat struct {
	Idle float64
}

// Name implements Target.
func (Socat) Name() string { return "socat" }

// Check implements Checker.
func (Socat) Check() error { return lookPath("socat", "socat") }

// Start implements Target.
func (s Socat) Start(backend netip.AddrPort, m Mode) (*Instance, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	idle := s.Idle
	if idle <= 0 {
		idle = 5
	}
	addr := netip.AddrPortFrom(loopback, port)
	args := []string{"-T", strconv.FormatFloat(idle, 'f', -1, 64),
		fmt.Sprintf("UDP4-LISTEN:%d,bind=127.0.0.1,fork,reuseaddr", port),
		fmt.Sprintf("UDP4:%s", backend)}
	return startProcess("socat", "socat", args, addr, m)
}

// Knot runs knotd through the peers' start-knot.sh PORT, serving
// example.test: a real authoritative DNS backend.
type Knot struct {
	Script string
}

// Check implements Checker.
func (k Knot) Check() error {
	if err := checkScript(k.Script); err != nil {
		return fmt.Errorf("knot %w", err)
	}
	return lookPath("knotd", "knot")
}

// Start starts knotd and waits until it answers probe (a DNS query).
func (k Knot) Start(probe []byte) (*Instance, error) {
	if err := k.Check(); err != nil {
		return nil, err
	}
	port, err := FreeUDPPort()
	if err != nil {
		return nil, err
	}
	pid, err := runScript(k.Script, strconv.Itoa(int(port)))
	if err != nil {
		return nil, err
	}
	inst := &Instance{Addr: netip.AddrPortFrom(loopback, port), PID: pid}
	dir := scriptDir(pid, "-c", "/tmp/peer-knot.")
	inst.stop = func() error {
		err := stopGroup(pid)
		if dir != "" {
			os.RemoveAll(dir)
		}
		return err
	}
	if err := WaitReply(inst.Addr, probe, startTimeout); err != nil {
		inst.Stop()
		return nil, fmt.Errorf("knot: %w", err)
	}
	return inst, nil
}
