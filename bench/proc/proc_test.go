package proc

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"
)

// statLine builds a stat(5) line with the given fields set and the rest
// zero, as the kernel prints it.
func statLine(pid int, comm string, ppid int, utime, stime uint64) string {
	return strconv.Itoa(pid) + " (" + comm + ") S " + strconv.Itoa(ppid) +
		" 1 1 0 -1 4194560 100 0 0 0 " + strconv.FormatUint(utime, 10) + " " +
		strconv.FormatUint(stime, 10) + " 0 0 20 0 3 0 12345 1000000 200 18446744073709551615\n"
}

func TestParseStat(t *testing.T) {
	for _, comm := range []string{"nginx", "a b", "x) (y", ")", "((", ""} {
		s, err := ParseStat([]byte(statLine(4242, comm, 7, 123, 45)))
		if err != nil {
			t.Fatalf("comm %q: %v", comm, err)
		}
		want := Stat{PID: 4242, Comm: comm, State: 'S', PPID: 7, Utime: 123, Stime: 45}
		if s != want {
			t.Errorf("comm %q: got %+v, want %+v", comm, s, want)
		}
		if s.CPU() != 168 {
			t.Errorf("CPU = %d, want 168", s.CPU())
		}
	}
	for _, bad := range []string{"", "12 nginx S 1", "12 (x) S 1 2 3", "x (y) S 1 1 1 0 -1 0 0 0 0 0 1 2", "1 (y) S 1 1 1 0 -1 0 0 0 0 0 u 2"} {
		if _, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) succeeded", bad)
		}
	}
}

func TestTicksMicros(t *testing.T) {
	if hz := ClockTicks(); hz != 100 {
		t.Logf("USER_HZ is %d", hz) // unusual but legal
	}
	if got, want := Ticks(ClockTicks()).Micros(), 1e6; got != want {
		t.Errorf("one second of ticks = %v µs, want %v", got, want)
	}
}

// writeFakeProc lays out a /proc with a process tree: 10 -> 11 -> 12, and
// 20 unrelated; 10 has two threads.
func writeFakeProc(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	put := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("10/stat", statLine(10, "nginx", 1, 100, 50)) // includes exited threads
	put("10/task/10/stat", statLine(10, "nginx", 1, 60, 30))
	put("10/task/13/stat", statLine(13, "nginx", 1, 20, 10))
	put("11/stat", statLine(11, "nginx: worker", 10, 1000, 500))
	put("12/stat", statLine(12, "helper", 11, 7, 3))
	put("20/stat", statLine(20, "other", 1, 9999, 9999))
	put("self/stat", statLine(99, "self", 1, 1, 1)) // not numeric: ignored
	put("version", "Linux\n")
	return dir
}

func TestFakeTree(t *testing.T) {
	old := root
	root = writeFakeProc(t)
	defer func() { root = old }()

	p, err := Process(10)
	if err != nil || p.CPU() != 150 {
		t.Fatalf("Process(10) = %+v, %v; want CPU 150", p, err)
	}
	th, err := Threads(10)
	if err != nil || len(th) != 2 {
		t.Fatalf("Threads(10) = %+v, %v", th, err)
	}
	var sum Ticks
	for _, s := range th {
		sum += s.CPU()
	}
	if sum != 120 {
		t.Errorf("thread sum = %d, want 120", sum)
	}
	d, err := Descendants(10)
	slices.Sort(d)
	if err != nil || !slices.Equal(d, []int{11, 12}) {
		t.Errorf("Descendants(10) = %v, %v; want [11 12]", d, err)
	}
	tot, err := TreeCPU(10)
	if err != nil || tot != 150+1500+10 {
		t.Errorf("TreeCPU(10) = %d, %v; want 1660", tot, err)
	}
	if _, err := TreeCPU(77); err == nil {
		t.Error("TreeCPU of a missing pid succeeded")
	}
}

// TestSelfBurn burns CPU on one locked thread until getrusage says the
// thread used 200 ms, and checks that the thread's and the process's stat
// saw the same amount within rounding (an independent source: rusage has
// microsecond resolution, stat has ticks).
func TestSelfBurn(t *testing.T) {
	pid := os.Getpid()
	type sample struct {
		thread, process Ticks
		rThread         time.Duration // getrusage(RUSAGE_THREAD)
		rSelf           time.Duration // getrusage(RUSAGE_SELF)
	}
	const want = 200 * time.Millisecond
	res := make(chan [2]sample, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		taskStat := filepath.Join(root, strconv.Itoa(pid), "task", strconv.Itoa(gettid()), "stat")
		take := func() (s sample, err error) {
			th, err := readStat(taskStat)
			if err != nil {
				return s, err
			}
			pr, err := Process(pid)
			if err != nil {
				return s, err
			}
			return sample{th.CPU(), pr.CPU(), rusage(true), rusage(false)}, nil
		}
		s0, err := take()
		if err != nil {
			errc <- err
			return
		}
		deadline := time.Now().Add(20 * time.Second)
		for rusage(true)-s0.rThread < want && time.Now().Before(deadline) {
			for i := 0; i < 1e5; i++ {
				_ = i * i
			}
		}
		s1, err := take()
		if err != nil {
			errc <- err
			return
		}
		res <- [2]sample{s0, s1}
	}()
	var s [2]sample
	select {
	case err := <-errc:
		t.Fatal(err)
	case s = <-res:
	}
	toTicks := func(d time.Duration) float64 { return d.Seconds() * float64(ClockTicks()) }
	rt := toTicks(s[1].rThread - s[0].rThread)
	if rt < toTicks(want) {
		t.Skipf("the burning thread got only %.0f ticks in 20 s: machine too loaded", rt)
	}
	if got := float64(s[1].thread - s[0].thread); got < rt-2 || got > rt+2 {
		t.Errorf("thread stat grew by %.0f ticks, getrusage(RUSAGE_THREAD) by %.1f", got, rt)
	}
	// Other threads run too; both sources see them, read a few µs apart.
	rs := toTicks(s[1].rSelf - s[0].rSelf)
	if got := float64(s[1].process - s[0].process); got < rs-4 || got > rs+4 {
		t.Errorf("process stat grew by %.0f ticks, getrusage(RUSAGE_SELF) by %.1f", got, rs)
	}
	th, err := Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	var sum Ticks
	for _, st := range th {
		sum += st.CPU()
	}
	if total, _ := Process(pid); sum > total.CPU()+Ticks(len(th)) { // per-thread rounding
		t.Errorf("threads sum to %d ticks, more than the process total %d", sum, total.CPU())
	}
}

func TestDescendantsOfSelf(t *testing.T) {
	cmd := execSleep(t)
	d, err := Descendants(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(d, cmd) {
		t.Errorf("Descendants(self) = %v, missing child %d", d, cmd)
	}
	if _, err := TreeCPU(os.Getpid()); err != nil {
		t.Error(err)
	}
}

func TestSystem(t *testing.T) {
	got, err := parseSystem([]byte("cpu  10 1 5 100 4 2 3 7 50 50\ncpu0 1 2 3 4 5 6 7 8\n"))
	if err != nil || got != (CPUTimes{Busy: 28, Idle: 104, Total: 132}) {
		t.Errorf("parseSystem = %+v, %v", got, err)
	}
	if _, err := parseSystem([]byte("intr 1 2 3\n")); err == nil {
		t.Error("accepted a file without a cpu line")
	}
	a, err := System()
	if err != nil || a.Total == 0 || a.Busy > a.Total {
		t.Errorf("System() = %+v, %v", a, err)
	}
}

func TestRSS(t *testing.T) {
	n, err := parseRSS([]byte("Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\nThreads:\t1\n"))
	if err != nil || n != 2048<<10 {
		t.Errorf("parseRSS = %d, %v", n, err)
	}
	for _, bad := range []string{"Name: x\n", "VmRSS: 12\n", "VmRSS: x kB\n"} {
		if _, err := parseRSS([]byte(bad)); err == nil {
			t.Errorf("parseRSS(%q) succeeded", bad)
		}
	}
	if n, err := RSS(os.Getpid()); err != nil || n < 1<<20 {
		t.Errorf("RSS(self) = %d, %v", n, err)
	}
}

func TestParseStatChildren(t *testing.T) {
	line := "7 (socat) S 1 1 1 0 -1 4194560 100 0 0 0 5 6 70 80 20 0 3 0 12345\n"
	s, err := ParseStat([]byte(line))
	if err != nil || s.CUtime != 70 || s.CStime != 80 || s.CPU() != 11 {
		t.Errorf("ParseStat = %+v, %v", s, err)
	}
}
