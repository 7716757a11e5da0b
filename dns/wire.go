// Package dns reads and edits the DNS wire format (RFC 1035) without
// allocating: the header, the first question, the query ID. It is what
// fastudp's DNS mode needs to multiplex queries over shared upstream sockets
// (rewrite the ID, match a reply to its query by ID and question) and what a
// health probe needs to build a query; it does not decode resource records.
// Messages are used in place: a [Question]'s name is a sub-slice of the
// message it was parsed from.
package dns

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// HeaderLen is the length of the fixed DNS header.
const HeaderLen = 12

// MaxNameLen is the longest wire-format domain name (RFC 1035 §3.1).
const MaxNameLen = 255

// Header flag bits (RFC 1035 §4.1.1).
const (
	FlagQR = 1 << 15 // a response
	FlagAA = 1 << 10
	FlagTC = 1 << 9 // truncated: retry over TCP
	FlagRD = 1 << 8
	FlagRA = 1 << 7
)

// Errors returned by the parsers. They are sentinels, so that the data path
// can classify a malformed datagram without allocating.
var (
	ErrShort       = errors.New("dns: message shorter than its header or question")
	ErrNoQuestion  = errors.New("dns: question count is not 1")
	ErrLabel       = errors.New("dns: bad label in question name")
	ErrNameTooLong = errors.New("dns: question name longer than 255 octets")
	ErrCompressed  = errors.New("dns: compression pointer in the question name")
)

// Header is the fixed 12-byte DNS header.
type Header struct {
	ID                                 uint16
	Flags                              uint16
	QDCount, ANCount, NSCount, ARCount uint16
}

// ParseHeader reads the header of msg.
func ParseHeader(msg []byte) (Header, error) {
	if len(msg) < HeaderLen {
		return Header{}, ErrShort
	}
	return Header{
		ID:      be16(msg[0:]),
		Flags:   be16(msg[2:]),
		QDCount: be16(msg[4:]),
		ANCount: be16(msg[6:]),
		NSCount: be16(msg[8:]),
		ARCount: be16(msg[10:]),
	}, nil
}

// Response reports whether the QR bit is set.
func (h Header) Response() bool { return h.Flags&FlagQR != 0 }

// Truncated reports whether the TC bit is set.
func (h Header) Truncated() bool { return h.Flags&FlagTC != 0 }

// Opcode returns the 4-bit opcode (0 is QUERY).
func (h Header) Opcode() uint8 { return uint8(h.Flags>>11) & 0xf }

// RCode returns the header's 4-bit response code (an EDNS OPT record can
// extend it; that is not read here).
func (h Header) RCode() uint8 { return uint8(h.Flags & 0xf) }

// ID returns the query ID of msg, which must be at least 2 bytes long.
func ID(msg []byte) uint16 { return be16(msg) }

// SetID overwrites the query ID of msg, which must be at least 2 bytes long.
func SetID(msg []byte, id uint16) { msg[0], msg[1] = byte(id>>8), byte(id) }

// Question is the first question of a message. Name is the wire-format name
// (length-prefixed labels ending in the root's zero octet), a sub-slice of
// the message it was parsed from.
type Question struct {
	Name  []byte
	Type  uint16
	Class uint16
	// End is the offset in the message just past the question.
	End int
}

// ParseQuestion reads the single question of msg. It fails unless the
// header says exactly one question, and on a name that is malformed, longer
// than 255 octets or compressed (the first name in a message has nothing
// before it to point to).
func ParseQuestion(msg []byte) (Question, error) {
	if len(msg) < HeaderLen {
		return Question{}, ErrShort
	}
	if be16(msg[4:]) != 1 {
		return Question{}, ErrNoQuestion
	}
	i := HeaderLen
	for {
		if i >= len(msg) {
			return Question{}, ErrShort
		}
		l := int(msg[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 {
			if l&0xc0 == 0xc0 {
				return Question{}, ErrCompressed
			}
			return Question{}, ErrLabel
		}
		i += 1 + l
		if i-HeaderLen >= MaxNameLen {
			return Question{}, ErrNameTooLong
		}
	}
	if i+4 > len(msg) {
		return Question{}, ErrShort
	}
	return Question{
		Name:  msg[HeaderLen:i],
		Type:  be16(msg[i:]),
		Class: be16(msg[i+2:]),
		End:   i + 4,
	}, nil
}

// Hash returns a seeded 64-bit hash of the question's name (ASCII letters
// folded to lower case, so a 0x20-randomised name and its echo agree), type
// and class. Two questions that are equal under [Question.Equal] have equal
// hashes; with a secret seed, a reply forged to match a query's hash without
// seeing the query is as hard as guessing 64 random bits.
func (q *Question) Hash(seed uint64) uint64 {
	h := seed ^ 0x9e3779b97f4a7c15
	name := q.Name
	for len(name) >= 8 {
		v := uint64(name[0]) | uint64(name[1])<<8 | uint64(name[2])<<16 | uint64(name[3])<<24 |
			uint64(name[4])<<32 | uint64(name[5])<<40 | uint64(name[6])<<48 | uint64(name[7])<<56
		h = mix(h ^ foldLower8(v))
		name = name[8:]
	}
	var v uint64
	for i, c := range name {
		v |= uint64(c) << (8 * i)
	}
	h = mix(h ^ foldLower8(v) ^ uint64(len(q.Name))<<56)
	return mix(h ^ uint64(q.Type)<<16 ^ uint64(q.Class))
}

// foldLower8 lower-cases the ASCII capitals among the 8 bytes of v. A length
// octet in the range 'A'..'Z' (65..90) is folded too; that is harmless for
// hashing, since both sides of a comparison fold the same way and labels
// that long are rare.
func foldLower8(v uint64) uint64 {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	// For each byte b < 0x80: (b + (0x80-'A')) has its high bit set iff
	// b >= 'A'; (b + (0x80-'Z'-1)) has it set iff b > 'Z'.
	ascii := ^v & high
	b := v &^ high
	ge := (b + ones*(0x80-'A')) & ascii
	gt := (b + ones*(0x80-'Z'-1)) & ascii
	upper := ge &^ gt
	return v | upper>>2
}

func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}

// Equal reports whether q and r ask the same: the same name compared
// without regard to ASCII case, the same type and class.
func (q *Question) Equal(r *Question) bool {
	if q.Type != r.Type || q.Class != r.Class || len(q.Name) != len(r.Name) {
		return false
	}
	for i := range q.Name {
		a, b := q.Name[i], r.Name[i]
		if a != b && lower(a) != lower(b) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// String returns the question in presentation form, "example.test. A IN".
// It allocates; it is for logs and tests.
func (q *Question) String() string {
	return NameString(q.Name) + " " + TypeString(q.Type) + " " + ClassString(q.Class)
}

// NameString returns a wire-format name in presentation form with a
// trailing dot; bytes outside printable ASCII, dots and backslashes inside a
// label are escaped as \DDD.
func NameString(name []byte) string {
	var b strings.Builder
	for i := 0; i < len(name); {
		l := int(name[i])
		i++
		if l == 0 || i+l > len(name) {
			break
		}
		for _, c := range name[i : i+l] {
			if c <= ' ' || c >= 0x7f || c == '.' || c == '\\' {
				fmt.Fprintf(&b, "\\%03d", c)
			} else {
				b.WriteByte(c)
			}
		}
		b.WriteByte('.')
		i += l
	}
	if b.Len() == 0 {
		return "."
	}
	return b.String()
}

// AppendName appends the wire form of the presentation-form name (dots
// between labels, trailing dot optional, no escapes) to dst.
func AppendName(dst []byte, name string) ([]byte, error) {
	name = strings.TrimSuffix(name, ".")
	total := 1
	if name != "" {
		for label := range strings.SplitSeq(name, ".") {
			if label == "" || len(label) > 63 {
				return dst, fmt.Errorf("dns: name %q: %w", name, ErrLabel)
			}
			total += 1 + len(label)
			if total > MaxNameLen {
				return dst, fmt.Errorf("dns: name %q: %w", name, ErrNameTooLong)
			}
			dst = append(dst, byte(len(label)))
			dst = append(dst, label...)
		}
	}
	return append(dst, 0), nil
}

// ClassIN is the Internet class.
const ClassIN = 1

// AppendQuery appends a query message for (name, qtype, IN) with the given
// ID and the RD bit to dst. udpSize > 0 adds an EDNS(0) OPT record
// advertising that UDP payload size.
func AppendQuery(dst []byte, id uint16, name string, qtype uint16, udpSize uint16) ([]byte, error) {
	ar := uint16(0)
	if udpSize > 0 {
		ar = 1
	}
	dst = append(dst, byte(id>>8), byte(id), FlagRD>>8, 0, 0, 1, 0, 0, 0, 0, byte(ar>>8), byte(ar))
	var err error
	if dst, err = AppendName(dst, name); err != nil {
		return dst, err
	}
	dst = append(dst, byte(qtype>>8), byte(qtype), 0, ClassIN)
	if udpSize > 0 {
		// OPT: root name, type 41, class = UDP size, TTL 0, RDLEN 0.
		dst = append(dst, 0, 0, 41, byte(udpSize>>8), byte(udpSize), 0, 0, 0, 0, 0, 0)
	}
	return dst, nil
}

var typeNames = map[uint16]string{
	1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
	33: "SRV", 35: "NAPTR", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 64: "SVCB",
	65: "HTTPS", 255: "ANY", 257: "CAA",
}

// TypeString returns the mnemonic of a record type, or "TYPEn" (RFC 3597).
func TypeString(t uint16) string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return "TYPE" + strconv.Itoa(int(t))
}

// ParseType parses a record type mnemonic such as "A" or "AAAA", case
// insensitively, or the generic "TYPEn".
func ParseType(s string) (uint16, error) {
	u := strings.ToUpper(s)
	for t, n := range typeNames {
		if n == u {
			return t, nil
		}
	}
	if rest, ok := strings.CutPrefix(u, "TYPE"); ok {
		if n, err := strconv.ParseUint(rest, 10, 16); err == nil {
			return uint16(n), nil
		}
	}
	return 0, fmt.Errorf("dns: unknown record type %q", s)
}

// ClassString returns "IN", "CH", "HS", "ANY" or "CLASSn".
func ClassString(c uint16) string {
	switch c {
	case 1:
		return "IN"
	case 3:
		return "CH"
	case 4:
		return "HS"
	case 255:
		return "ANY"
	}
	return "CLASS" + strconv.Itoa(int(c))
}

var rcodeNames = [...]string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
	"YXDOMAIN", "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"}

// RCodeString returns the mnemonic of a 4-bit response code.
func RCodeString(rc uint8) string {
	if int(rc) < len(rcodeNames) {
		return rcodeNames[rc]
	}
	return "RCODE" + strconv.Itoa(int(rc))
}

// ParseRCode parses a response code mnemonic such as "NOERROR" or
// "NXDOMAIN", case insensitively, or a number 0..15.
func ParseRCode(s string) (uint8, error) {
	u := strings.ToUpper(s)
	for i, n := range rcodeNames {
		if n == u {
			return uint8(i), nil
		}
	}
	if n, err := strconv.ParseUint(strings.TrimPrefix(u, "RCODE"), 10, 8); err == nil && n < 16 {
		return uint8(n), nil
	}
	return 0, fmt.Errorf("dns: unknown rcode %q", s)
}

func be16(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }
