package loadgen

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// DNS wire-format helpers for the generator's DNS mode and the DNS
// responder: enough of RFC 1035 to build queries for one name each, to
// match responses by ID and to answer A queries. Nothing here allocates per
// datagram.

const dnsHeaderLen = 12

// DNS record types the query file may name.
var dnsTypes = map[string]uint16{
	"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255,
}

// Query is one DNS question.
type Query struct {
	Name string // fully qualified or not; a trailing dot is optional
	Type uint16 // 1 for A
}

// ParseQueries reads queries in dnsperf's format: one "NAME TYPE" per line;
// blank lines and lines starting with '#' or ';' are skipped.
func ParseQueries(r io.Reader) ([]Query, error) {
	var out []Query
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("queries: line %d: want NAME TYPE, got %q", n, line)
		}
		t, ok := dnsTypes[strings.ToUpper(f[1])]
		if !ok {
			v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToUpper(f[1]), "TYPE"), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("queries: line %d: unknown type %q", n, f[1])
			}
			t = uint16(v)
		}
		out = append(out, Query{Name: f[0], Type: t})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("queries: none found")
	}
	return out, nil
}

// ReadQueryFile reads a dnsperf query file (see [ParseQueries]).
func ReadQueryFile(path string) ([]Query, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	q, err := ParseQueries(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return q, nil
}

// GenerateQueries returns n A queries for h1.example.test to hN.example.test,
// the names of ../shared/peers/example.test.zone.
func GenerateQueries(n int) []Query {
	out := make([]Query, n)
	for i := range out {
		out[i] = Query{Name: "h" + strconv.Itoa(i+1) + ".example.test", Type: 1}
	}
	return out
}

// EncodeQuery appends the wire form of a recursive query for q with the
// given ID to dst.
func EncodeQuery(dst []byte, id uint16, q Query) ([]byte, error) {
	dst = binary.BigEndian.AppendUint16(dst, id)
	dst = append(dst, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; QDCOUNT 1
	name := strings.TrimSuffix(q.Name, ".")
	if name != "" {
		total := 0
		for _, label := range strings.Split(name, ".") {
			if label == "" || len(label) > 63 {
				return nil, fmt.Errorf("dns: bad name %q", q.Name)
			}
			total += 1 + len(label)
			dst = append(dst, byte(len(label)))
			dst = append(dst, label...)
		}
		if total > 254 {
			return nil, fmt.Errorf("dns: name %q too long", q.Name)
		}
	}
	dst = append(dst, 0)
	dst = binary.BigEndian.AppendUint16(dst, q.Type)
	return binary.BigEndian.AppendUint16(dst, 1), nil // class IN
}

// dnsID returns the ID of a DNS message and whether it looks like a
// response (long enough, QR set).
func dnsID(b []byte) (id uint16, response bool) {
	if len(b) < dnsHeaderLen {
		return 0, false
	}
	return binary.BigEndian.Uint16(b), b[2]&0x80 != 0
}

// setDNSID overwrites the ID of the DNS message in b.
func setDNSID(b []byte, id uint16) { binary.BigEndian.PutUint16(b, id) }

// questionEnd returns the offset just past the single question of the
// query q, or -1 if q is not a standard query with one uncompressed
// question.
func questionEnd(q []byte) (end int, qtype uint16) {
	if len(q) < dnsHeaderLen || q[2]&0x80 != 0 || q[2]&0x78 != 0 || binary.BigEndian.Uint16(q[4:]) != 1 {
		return -1, 0
	}
	off := dnsHeaderLen
	for {
		if off >= len(q) {
			return -1, 0
		}
		l := int(q[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 || off+1+l > len(q) || off+1+l-dnsHeaderLen > 255 {
			return -1, 0
		}
		off += 1 + l
	}
	if off+4 > len(q) {
		return -1, 0
	}
	return off + 4, binary.BigEndian.Uint16(q[off:])
}

// answerQuery writes into dst the authoritative answer to query q: for an
// A query one A record, addr, with a TTL of an hour; for any other type no
// record (NOERROR, NODATA). Additional records of the query (EDNS) are not
// echoed. It returns the length, or 0 if q is not a query it can answer or
// dst is too short.
func answerQuery(dst, q []byte, addr [4]byte) int {
	end, qtype := questionEnd(q)
	if end < 0 || len(dst) < end+16 {
		return 0
	}
	copy(dst, q[:end])
	dst[2] = 0x84 | q[2]&0x01 // QR, AA, RD copied; opcode 0
	dst[3] = 0                // RA 0, RCODE NOERROR
	binary.BigEndian.PutUint16(dst[6:], 0)
	binary.BigEndian.PutUint32(dst[8:], 0) // NSCOUNT, ARCOUNT
	if qtype != 1 {
		return end
	}
	dst[7] = 1 // ANCOUNT
	a := dst[end : end+16]
	a[0], a[1] = 0xc0, dnsHeaderLen // name: pointer to the question
	binary.BigEndian.PutUint16(a[2:], 1)
	binary.BigEndian.PutUint16(a[4:], 1)
	binary.BigEndian.PutUint32(a[6:], 3600)
	binary.BigEndian.PutUint16(a[10:], 4)
	copy(a[12:], addr[:])
	return end + 16
}
