package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/fastudp/fastudp/batchio"
	"github.com/fastudp/fastudp/config"
)

// Start-up checks of the host limits fastudp relies on: each limit found
// too low for the configuration is one WARN line with the value found, the
// value needed and how to fix it. fastudp still starts: the data path
// counts and sheds what does not fit (fastudp_resource_errors_total).

// hostLimits are the values the checks read.
type hostLimits struct {
	// NoFile is the soft RLIMIT_NOFILE (after raising it to the hard
	// limit) and NoFileMax the hard limit; 0 when unknown.
	NoFile, NoFileMax uint64
	// RmemMax and WmemMax are net.core.rmem_max and wmem_max; -1 when
	// unknown.
	RmemMax, WmemMax int64
	// PortLow and PortHigh are net.ipv4.ip_local_port_range; 0 when
	// unknown.
	PortLow, PortHigh int
	// NetAdmin is CAP_NET_ADMIN in the effective set: SO_RCVBUFFORCE and
	// SO_SNDBUFFORCE then go past rmem_max and wmem_max.
	NetAdmin bool
}

// limitWarning is one limit found too low.
type limitWarning struct {
	Msg    string
	Found  string
	Needed string
	Fix    string
}

// maxPortRange is the widest ip_local_port_range: 1024-65535.
const maxPortRange = 65535 - 1024 + 1

// fdMargin is the descriptors counted for everything but flows and shard
// sockets: the control and metrics listeners and their connections, health
// probes, DNS-over-TCP connections, the access log, the Go runtime.
const fdMargin = 256

// neededFDs is the descriptors the configuration may hold at once: one per
// flow (its upstream socket), and per shard its epoll instance, eventfd,
// a socket per listener and the shared DNS-mode upstream sockets.
func neededFDs(cfg *config.Config) uint64 {
	shards := cfg.ShardCount()
	flows, dnsSocks := 0, 0
	for _, l := range cfg.Listeners {
		cl := cfg.Cluster(l.Cluster)
		if cl != nil && cl.Mode == config.ModeDNS {
			dnsSocks += max(cl.DNS.Sockets, 1) * len(cl.Backends)
			continue
		}
		flows = cfg.MaxFlowsPerShard(shards) * shards
	}
	return uint64(flows + shards*(2+len(cfg.Listeners)+dnsSocks) + fdMargin)
}

// checkLimits compares the host's limits with what cfg needs.
func checkLimits(cfg *config.Config, h hostLimits) []limitWarning {
	var out []limitWarning
	if need := neededFDs(cfg); h.NoFile > 0 && h.NoFile < need {
		fix := fmt.Sprintf("raise the hard limit to at least %d (systemd: LimitNOFILE=; shell: ulimit -Hn; /etc/security/limits.conf), or lower max_flows", need)
		out = append(out, limitWarning{
			Msg:    "open-file limit (RLIMIT_NOFILE) below what max_flows needs: new flows will be shed once descriptors run out",
			Found:  fmt.Sprintf("%d (hard limit %d)", h.NoFile, h.NoFileMax),
			Needed: strconv.FormatUint(need, 10),
			Fix:    fix,
		})
	}
	if !h.NetAdmin {
		for _, b := range []struct {
			key, sysctl string
			want        int
			have        int64
		}{
			{"socket_receive_buffer", "net.core.rmem_max", cfg.SocketReceiveBuffer, h.RmemMax},
			{"socket_send_buffer", "net.core.wmem_max", cfg.SocketSendBuffer, h.WmemMax},
		} {
			if b.have >= 0 && b.want > 0 && int64(b.want) > b.have {
				out = append(out, limitWarning{
					Msg:    b.sysctl + " below " + b.key + ": the kernel caps the socket buffers to it",
					Found:  strconv.FormatInt(b.have, 10),
					Needed: strconv.Itoa(b.want),
					Fix:    fmt.Sprintf("sysctl -w %s=%d (and in /etc/sysctl.d/), or run with CAP_NET_ADMIN", b.sysctl, b.want),
				})
			}
		}
	}
	if h.PortHigh > 0 && h.PortHigh >= h.PortLow {
		ports := h.PortHigh - h.PortLow + 1
		srcs := max(len(cfg.UpstreamSources), 1)
		generic := 0
		for _, l := range cfg.Listeners {
			if cl := cfg.Cluster(l.Cluster); cl == nil || cl.Mode != config.ModeDNS {
				generic = cfg.MaxFlows
			}
		}
		if perSrc := (generic + srcs - 1) / srcs; perSrc > ports {
			fix := `sysctl -w net.ipv4.ip_local_port_range="1024 65535", add addresses to upstream_sources, or lower max_flows`
			if perSrc > maxPortRange {
				fix = fmt.Sprintf("add addresses to upstream_sources (at least %d for max_flows %d: one address has at most %d ports), or lower max_flows",
					(generic+maxPortRange-1)/maxPortRange, generic, maxPortRange)
			}
			out = append(out, limitWarning{
				Msg: "net.ipv4.ip_local_port_range smaller than max_flows per upstream source address: " +
					"each flow holds a local port, new flows will be shed once they run out",
				Found:  fmt.Sprintf("%d ports (%d-%d) for %d source address(es)", ports, h.PortLow, h.PortHigh, srcs),
				Needed: fmt.Sprintf("%d ports per source address", perSrc),
				Fix:    fix,
			})
		}
	}
	return out
}

// readHostLimits reads the limits through read (os.ReadFile outside
// tests) and the soft and hard RLIMIT_NOFILE given; a value that cannot be
// read is left unknown and not checked.
func readHostLimits(read func(string) ([]byte, error), nofile, nofileMax uint64) hostLimits {
	h := hostLimits{NoFile: nofile, NoFileMax: nofileMax, RmemMax: -1, WmemMax: -1}
	num := func(path string) int64 {
		b, err := read(path)
		if err != nil {
			return -1
		}
		v, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
		if err != nil {
			return -1
		}
		return v
	}
	h.RmemMax = num("/proc/sys/net/core/rmem_max")
	h.WmemMax = num("/proc/sys/net/core/wmem_max")
	if b, err := read("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.Atoi(f[0])
			hi, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				h.PortLow, h.PortHigh = lo, hi
			}
		}
	}
	if b, err := read("/proc/self/status"); err == nil {
		h.NetAdmin = capEff(b)&(1<<unix.CAP_NET_ADMIN) != 0
	}
	return h
}

// capEff returns the CapEff bit set of a /proc/PID/status file (0 when
// absent or malformed).
func capEff(status []byte) uint64 {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("CapEff:")); ok {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
			if err != nil {
				return 0
			}
			return n
		}
	}
	return 0
}

// warnLimits raises the soft open-file limit to the hard one (Go's os
// package does so too since 1.19) and logs one warning per limit too low.
func warnLimits(log *slog.Logger, cfg *config.Config) {
	var lim unix.Rlimit
	soft, hard := uint64(0), uint64(0)
	if n, err := batchio.RaiseNoFileLimit(); err != nil {
		log.Warn("cannot raise the open-file limit", "err", err)
	} else {
		log.Debug("open-file limit", "limit", n)
	}
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		soft, hard = lim.Cur, lim.Max
	}
	for _, w := range checkLimits(cfg, readHostLimits(os.ReadFile, soft, hard)) {
		log.Warn(w.Msg, "found", w.Found, "needed", w.Needed, "fix", w.Fix)
	}
}

// noFileLimit returns the soft RLIMIT_NOFILE, 0 when unknown.
func noFileLimit() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}
