package proc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// UDPStats are the system-wide UDP counters of /proc/net/snmp (the "Udp:"
// lines), which count every socket of the network namespace.
type UDPStats struct {
	InDatagrams  uint64 // datagrams delivered to sockets
	NoPorts      uint64 // datagrams to a port nothing listens on
	InErrors     uint64 // datagrams not delivered (RcvbufErrors among them)
	RcvbufErrors uint64 // datagrams dropped on a full socket receive queue
	OutDatagrams uint64
}

// UDP reads the UDP counters of /proc/net/snmp.
func UDP() (UDPStats, error) {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return UDPStats{}, fmt.Errorf("proc: %w", err)
	}
	return ParseUDP(b)
}

// ParseUDP parses the contents of /proc/net/snmp: a "Udp:" line of field
// names followed by a "Udp:" line of values, in the same order. Fields it
// does not know are ignored; one it knows that is missing stays zero.
func ParseUDP(b []byte) (UDPStats, error) {
	var s UDPStats
	var names [][]byte
	for line := range bytes.Lines(b) {
		rest, ok := bytes.CutPrefix(line, []byte("Udp:"))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if names == nil {
			names = fields
			continue
		}
		if len(fields) != len(names) {
			return s, fmt.Errorf("proc: snmp: %d UDP field names but %d values", len(names), len(fields))
		}
		for i, f := range fields {
			var dst *uint64
			switch string(names[i]) {
			case "InDatagrams":
				dst = &s.InDatagrams
			case "NoPorts":
				dst = &s.NoPorts
			case "InErrors":
				dst = &s.InErrors
			case "RcvbufErrors":
				dst = &s.RcvbufErrors
			case "OutDatagrams":
				dst = &s.OutDatagrams
			default:
				continue
			}
			v, err := strconv.ParseUint(string(f), 10, 64)
			if err != nil {
				return s, fmt.Errorf("proc: snmp: UDP %s: %w", names[i], err)
			}
			*dst = v
		}
		return s, nil
	}
	return s, fmt.Errorf("proc: snmp: no UDP counters")
}
