package proc

import (
	"strings"
	"testing"
)

const snmpSample = `Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 1004851371 68688611 2168067 823080831 2168066 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
`

func TestParseUDP(t *testing.T) {
	s, err := ParseUDP([]byte(snmpSample))
	if err != nil {
		t.Fatal(err)
	}
	want := UDPStats{InDatagrams: 1004851371, NoPorts: 68688611, InErrors: 2168067, RcvbufErrors: 2168066, OutDatagrams: 823080831}
	if s != want {
		t.Errorf("got %+v, want %+v", s, want)
	}
	for _, bad := range []string{"", "Ip: 1\n", "Udp: InDatagrams RcvbufErrors\nUdp: 1\n", "Udp: RcvbufErrors\nUdp: x\n", "Udp: A B\n"} {
		if _, err := ParseUDP([]byte(bad)); err == nil {
			t.Errorf("ParseUDP(%q) succeeded", bad)
		}
	}
}

// TestUDPLive reads this machine's counters: the names the parser knows
// are the kernel's.
func TestUDPLive(t *testing.T) {
	s, err := UDP()
	if err != nil {
		t.Fatal(err)
	}
	if s.RcvbufErrors > s.InErrors {
		t.Errorf("RcvbufErrors %d > InErrors %d", s.RcvbufErrors, s.InErrors)
	}
}

func FuzzParseUDP(f *testing.F) {
	f.Add([]byte(snmpSample))
	f.Add([]byte("Udp: RcvbufErrors\nUdp: 18446744073709551616\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// Any input: an error or counters, never a panic; a parse that
		// succeeds found a "Udp:" value line.
		if _, err := ParseUDP(b); err == nil && !strings.Contains(string(b), "Udp:") {
			t.Fatalf("parsed %q without a Udp: line", b)
		}
	})
}
