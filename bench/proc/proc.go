// Package proc reads the CPU time that processes and their threads have
// used, from /proc/PID/stat and /proc/PID/task/TID/stat (Linux), so a
// benchmark can charge a proxy for the CPU it spent during a run.
//
// Times are kept in clock ticks, as the kernel reports them (utime and
// stime, fields 14 and 15 of stat(5)), and converted to microseconds with
// the tick rate from the auxiliary vector (AT_CLKTCK; 100 on every common
// Linux build). One tick is 10 ms, so a measurement window should hold at
// least a few hundred milliseconds of CPU for a 1% resolution.
package proc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Ticks is an amount of CPU time in clock ticks (USER_HZ).
type Ticks uint64

// Micros converts t to microseconds with the system's tick rate.
func (t Ticks) Micros() float64 { return float64(t) * 1e6 / float64(ClockTicks()) }

// Stat is the part of /proc/PID/stat (or a task's stat) that a benchmark
// needs.
type Stat struct {
	PID   int    // process or thread id
	Comm  string // command name (at most 15 bytes, may hold spaces and ')')
	State byte   // R, S, D, Z, ...
	PPID  int
	Utime Ticks // user-mode time
	Stime Ticks // kernel-mode time
	// CUtime and CStime are the user and kernel time of children that
	// have exited and been waited for (fields 16 and 17).
	CUtime, CStime Ticks
}

// CPU returns Utime + Stime.
func (s Stat) CPU() Ticks { return s.Utime + s.Stime }

// ParseStat parses the contents of a /proc/PID/stat or
// /proc/PID/task/TID/stat file. The command name is found between the first
// '(' and the last ')', so names holding spaces or parentheses parse.
func ParseStat(b []byte) (Stat, error) {
	var s Stat
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return s, errors.New("proc: stat: no (comm)")
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return s, fmt.Errorf("proc: stat: pid: %w", err)
	}
	s.PID, s.Comm = pid, string(b[open+1:end])
	// Fields after ")": state(3) ppid(4) pgrp(5) session(6) tty_nr(7)
	// tpgid(8) flags(9) minflt(10) cminflt(11) majflt(12) cmajflt(13)
	// utime(14) stime(15) ...
	f := bytes.Fields(b[end+1:])
	if len(f) < 13 {
		return s, fmt.Errorf("proc: stat: %d fields after comm, want at least 13", len(f))
	}
	if len(f[0]) != 1 {
		return s, fmt.Errorf("proc: stat: bad state %q", f[0])
	}
	s.State = f[0][0]
	if s.PPID, err = strconv.Atoi(string(f[1])); err != nil {
		return s, fmt.Errorf("proc: stat: ppid: %w", err)
	}
	ut, err := strconv.ParseUint(string(f[11]), 10, 64)
	if err != nil {
		return s, fmt.Errorf("proc: stat: utime: %w", err)
	}
	st, err := strconv.ParseUint(string(f[12]), 10, 64)
	if err != nil {
		return s, fmt.Errorf("proc: stat: stime: %w", err)
	}
	s.Utime, s.Stime = Ticks(ut), Ticks(st)
	if len(f) >= 15 {
		cu, err1 := strconv.ParseInt(string(f[13]), 10, 64)
		cs, err2 := strconv.ParseInt(string(f[14]), 10, 64)
		if err1 == nil && err2 == nil && cu >= 0 && cs >= 0 {
			s.CUtime, s.CStime = Ticks(cu), Ticks(cs)
		}
	}
	return s, nil
}

// root is the proc mount; tests point it elsewhere.
var root = "/proc"

func readStat(path string) (Stat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return s, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Process returns /proc/PID/stat. Its CPU time covers every thread of the
// process, including threads that have already exited; it does not include
// child processes.
func Process(pid int) (Stat, error) {
	return readStat(filepath.Join(root, strconv.Itoa(pid), "stat"))
}

// Threads returns the stat of every live thread of pid, from
// /proc/PID/task/*/stat. A thread that exits while the directory is read is
// skipped. The sum over Threads misses the time of threads that exited
// earlier, so use [Process] for a total.
func Threads(pid int) ([]Stat, error) {
	dir := filepath.Join(root, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := make([]Stat, 0, len(ents))
	for _, e := range ents {
		s, err := readStat(filepath.Join(dir, e.Name(), "stat"))
		if errors.Is(err, os.ErrNotExist) {
			continue // exited meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Descendants returns the ids of pid's child processes, their children and
// so on (an nginx master's workers, for example), by scanning the ppid of
// every process in /proc.
func Descendants(pid int) ([]int, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := Process(p)
		if err != nil {
			continue // exited meanwhile, or not a process
		}
		children[s.PPID] = append(children[s.PPID], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out, nil
}

// TreeCPU returns the CPU time of pid and all its live descendants
// (utime+stime of each, exited threads included), plus the time of pid's
// children that have exited and been waited for (cutime+cstime), so a
// peer that forks a child per client (socat) is charged for the children
// it has reaped. A descendant that exited but was not yet reaped is not
// counted, so compare two TreeCPU samples only while the process tree is
// stable, or reaps promptly.
func TreeCPU(pid int) (Ticks, error) {
	s, err := Process(pid)
	if err != nil {
		return 0, err
	}
	total := s.CPU() + s.CUtime + s.CStime
	kids, err := Descendants(pid)
	if err != nil {
		return 0, err
	}
	for _, k := range kids {
		if ks, err := Process(k); err == nil {
			total += ks.CPU()
		}
	}
	return total, nil
}

var (
	clkOnce sync.Once
	clkTck  uint64
)

// ClockTicks returns the kernel's USER_HZ, the unit of stat's time fields:
// AT_CLKTCK from /proc/self/auxv, or 100 when that cannot be read.
func ClockTicks() uint64 {
	clkOnce.Do(func() {
		clkTck = 100
		if v, ok := auxv(17); ok && v > 0 { // AT_CLKTCK
			clkTck = v
		}
	})
	return clkTck
}

// auxv looks up one entry of the auxiliary vector (64-bit layout: pairs of
// native-endian uint64).
func auxv(key uint64) (uint64, bool) {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil || strconv.IntSize != 64 {
		return 0, false
	}
	for len(b) >= 16 {
		k, v := binary.NativeEndian.Uint64(b), binary.NativeEndian.Uint64(b[8:])
		if k == key {
			return v, true
		}
		if k == 0 {
			break
		}
		b = b[16:]
	}
	return 0, false
}

// CPUTimes is the machine-wide CPU time from the first line of /proc/stat,
// summed over all CPUs.
//
// With a tickless kernel (NO_HZ_IDLE) the idle and iowait times are
// measured exactly, but the busy fields are sampled at timer ticks, which
// miscount short bursts of work (a paced benchmark is exactly that). For a
// busy share, prefer 1 - Idle/(wall time × CPUs × ClockTicks) over
// Busy/Total.
type CPUTimes struct {
	Busy  Ticks // user, nice, system, irq, softirq, steal
	Idle  Ticks // idle and iowait
	Total Ticks // Busy plus Idle
}

// System returns the machine-wide CPU times.
func System() (CPUTimes, error) {
	b, err := os.ReadFile(filepath.Join(root, "stat"))
	if err != nil {
		return CPUTimes{}, err
	}
	return parseSystem(b)
}

func parseSystem(b []byte) (CPUTimes, error) {
	line, _, _ := bytes.Cut(b, []byte{'\n'})
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" {
		return CPUTimes{}, errors.New("proc: stat: no cpu line")
	}
	var t CPUTimes
	// user nice system idle iowait irq softirq steal [guest guest_nice]:
	// guest time is already counted in user and nice.
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil {
			return CPUTimes{}, fmt.Errorf("proc: stat: cpu field %d: %w", i+1, err)
		}
		t.Total += Ticks(v)
		if i == 3 || i == 4 { // idle, iowait
			t.Idle += Ticks(v)
		} else {
			t.Busy += Ticks(v)
		}
	}
	return t, nil
}

// RSS returns the resident set size of pid in bytes (VmRSS from
// /proc/PID/status).
func RSS(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	return parseRSS(b)
}

func parseRSS(b []byte) (uint64, error) {
	for len(b) > 0 {
		line, rest, _ := bytes.Cut(b, []byte{'\n'})
		b = rest
		v, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(v)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("proc: status: bad VmRSS line %q", line)
		}
		n, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc: status: VmRSS: %w", err)
		}
		return n << 10, nil
	}
	return 0, errors.New("proc: status: no VmRSS (a kernel thread, or a zombie)")
}

// CPUModel returns the "model name" line of /proc/cpuinfo, for reports.
func CPUModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// KernelRelease returns the running kernel's release, for reports.
func KernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
