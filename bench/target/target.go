// Package target starts and stops the systems a benchmark measures: the
// fastudp binary, peers such as nginx stream UDP (through the start scripts
// in ../shared/peers), and "direct" (no proxy at all). Each runs on
// loopback in front of a backend the benchmark provides, and reports the
// process whose CPU time is charged to it.
package target

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/fastudp/fastudp/bench/proc"
)

// Mode is what the benchmark asks of the proxy's flows.
type Mode struct {
	// Responses closes a flow after this many backend datagrams: 1 for
	// DNS-style request/response (every request a new flow), 0 for
	// long-lived flows.
	Responses int
	// Probe is the datagram sent to check that the target and its backend
	// answer (default "probe"; a DNS query in front of a DNS server).
	Probe []byte
}

func (m Mode) probe() []byte {
	if len(m.Probe) == 0 {
		return []byte("probe")
	}
	return m.Probe
}

// Target is a system under test.
type Target interface {
	// Name is the label in reports, such as "fastudp-2".
	Name() string
	// Start runs the target in front of backend and returns once it
	// answers on its address.
	Start(backend netip.AddrPort, m Mode) (*Instance, error)
}

// Instance is a running target.
type Instance struct {
	// Addr is where clients send.
	Addr netip.AddrPort
	// PID is the process charged for CPU time, with its descendants; 0
	// for a target with no process of its own (direct).
	PID int
	// Metrics is the URL of a Prometheus text endpoint, or "".
	Metrics string

	stop func() error
}

// CPU returns the CPU time used so far by the instance's process tree
// (0 for direct).
func (i *Instance) CPU() (proc.Ticks, error) {
	if i.PID == 0 {
		return 0, nil
	}
	return proc.TreeCPU(i.PID)
}

// Stop stops the instance and everything it started; it is safe to call
// more than once.
func (i *Instance) Stop() error {
	if i.stop == nil {
		return nil
	}
	f := i.stop
	i.stop = nil
	return f()
}

// Direct is the no-proxy baseline: clients send straight to the backend.
type Direct struct{}

// Name implements Target.
func (Direct) Name() string { return "direct" }

// Start implements Target.
func (Direct) Start(backend netip.AddrPort, _ Mode) (*Instance, error) {
	return &Instance{Addr: backend}, nil
}

// FreeUDPPort returns a loopback UDP port that was free a moment ago.
func FreeUDPPort() (uint16, error) {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Port(), nil
}

// FreeTCPPort returns a loopback TCP port that was free a moment ago.
func FreeTCPPort() (uint16, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).AddrPort().Port(), nil
}

var loopback = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// WaitEcho sends a probe to addr every 50 ms until a datagram comes back,
// for up to timeout: the target is up and its backend answers. Through a
// proxy the probe opens one flow of its own.
func WaitEcho(addr netip.AddrPort, timeout time.Duration) error {
	return WaitReply(addr, []byte("probe"), timeout)
}

// WaitReply is [WaitEcho] with the given probe datagram.
func WaitReply(addr netip.AddrPort, probe []byte, timeout time.Duration) error {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 4096)
	var lastErr error
	for end := time.Now().Add(timeout); time.Now().Before(end); {
		if _, err := c.Write(probe); err != nil {
			lastErr = err // ECONNREFUSED until the port is bound
		}
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return nil
		} else if !isTimeout(err) {
			lastErr = err
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no answer")
	}
	return fmt.Errorf("%v did not echo within %v: %w", addr, timeout, lastErr)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Scrape fetches a Prometheus text endpoint and returns, for each metric
// name asked for, the sum of its samples over all label sets. Names not
// exposed are absent from the map. For a sample with labels it also adds
// the value under `name{label="value"}` for each of its labels, so
// fastudp_shard_syscalls_total{call="sendmmsg"} is the sendmmsg calls of
// all shards.
func Scrape(url string, names ...string) (map[string]float64, error) {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body, want)
}

func parseMetrics(r io.Reader, want map[string]bool) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		if !want[name] {
			continue
		}
		// The value follows the labels: the first field after the
		// closing brace (an optional timestamp may follow it).
		rest := line[len(name):]
		var labels []string
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				return nil, fmt.Errorf("metrics: bad line %q", line)
			}
			labels = splitLabels(rest[1:j])
			rest = rest[j+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return nil, fmt.Errorf("metrics: no value in %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics: %q: %w", line, err)
		}
		out[name] += v
		for _, l := range labels {
			out[name+"{"+l+"}"] += v
		}
	}
	return out, sc.Err()
}

// splitLabels splits the inside of a label set, `a="x",b="y"`, into its
// pairs `a="x"` and `b="y"` (commas inside quoted values kept).
func splitLabels(s string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				if p := strings.TrimSpace(s[start:i]); p != "" {
					out = append(out, p)
				}
				start = i + 1
			}
		}
	}
	if p := strings.TrimSpace(s[start:]); p != "" {
		out = append(out, p)
	}
	return out
}
