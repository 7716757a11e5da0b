package dns

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func mustQuery(t testing.TB, id uint16, name string, qtype uint16, udp uint16) []byte {
	t.Helper()
	q, err := AppendQuery(nil, id, name, qtype, udp)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func TestQueryRoundTrip(t *testing.T) {
	msg := mustQuery(t, 0xbeef, "www.Example.test.", 28, 1232)
	h, err := ParseHeader(msg)
	if err != nil {
		t.Fatal(err)
	}
	if h.ID != 0xbeef || h.Response() || h.Truncated() || h.Opcode() != 0 || h.QDCount != 1 || h.ARCount != 1 || h.Flags&FlagRD == 0 {
		t.Fatalf("header %+v", h)
	}
	q, err := ParseQuestion(msg)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.String(); got != "www.Example.test. AAAA IN" {
		t.Fatalf("question %q", got)
	}
	if q.End != len(msg)-11 {
		t.Fatalf("End %d, message %d (11 bytes of OPT after the question)", q.End, len(msg))
	}
	SetID(msg, 7)
	if ID(msg) != 7 {
		t.Fatal("SetID")
	}
}

func TestParseQuestionErrors(t *testing.T) {
	good := mustQuery(t, 1, "a.example.", 1, 0)
	cases := []struct {
		name string
		msg  []byte
		want error
	}{
		{"empty", nil, ErrShort},
		{"header only", good[:HeaderLen], ErrShort},
		{"cut in name", good[:HeaderLen+3], ErrShort},
		{"cut in type", good[:len(good)-2], ErrShort},
		{"two questions", func() []byte { m := bytes.Clone(good); m[5] = 2; return m }(), ErrNoQuestion},
		{"no question", func() []byte { m := bytes.Clone(good); m[5] = 0; return m }(), ErrNoQuestion},
		{"pointer", append(bytes.Clone(good[:HeaderLen]), 0xc0, 0x0c, 0, 1, 0, 1), ErrCompressed},
		{"extended label", append(bytes.Clone(good[:HeaderLen]), 0x40, 0, 0, 1, 0, 1), ErrLabel},
	}
	long := bytes.Clone(good[:HeaderLen])
	for range 5 {
		long = append(long, 63)
		long = append(long, bytes.Repeat([]byte{'x'}, 63)...)
	}
	long = append(long, 0, 0, 1, 0, 1)
	cases = append(cases, struct {
		name string
		msg  []byte
		want error
	}{"name too long", long, ErrNameTooLong})
	for _, c := range cases {
		if _, err := ParseQuestion(c.msg); !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
}

func TestHashFoldsCase(t *testing.T) {
	a := mustQuery(t, 1, "WwW.ExAmPlE-42.TEST", 1, 0)
	b := mustQuery(t, 2, "www.example-42.test.", 1, 0)
	c := mustQuery(t, 3, "www.example-42.tesu.", 1, 0)
	d := mustQuery(t, 4, "www.example-42.test.", 28, 0)
	qa, _ := ParseQuestion(a)
	qb, _ := ParseQuestion(b)
	qc, _ := ParseQuestion(c)
	qd, _ := ParseQuestion(d)
	if !qa.Equal(&qb) || qa.Hash(9) != qb.Hash(9) {
		t.Fatal("case variants differ")
	}
	if qa.Equal(&qc) || qa.Hash(9) == qc.Hash(9) {
		t.Fatal("different names agree")
	}
	if qb.Equal(&qd) || qb.Hash(9) == qd.Hash(9) {
		t.Fatal("different types agree")
	}
	if qa.Hash(9) == qa.Hash(10) {
		t.Fatal("seed ignored")
	}
}

func TestFoldLower8(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		v := r.Uint64()
		want := uint64(0)
		for i := range 8 {
			c := byte(v >> (8 * i))
			want |= uint64(lower(c)) << (8 * i)
		}
		if got := foldLower8(v); got != want {
			t.Fatalf("foldLower8(%#x) = %#x, want %#x", v, got, want)
		}
	}
}

func TestNameString(t *testing.T) {
	n, err := AppendName(nil, "a.b")
	if err != nil {
		t.Fatal(err)
	}
	if s := NameString(n); s != "a.b." {
		t.Fatal(s)
	}
	if s := NameString([]byte{3, 'a', '.', 0xff, 0}); s != `a\046\255.` {
		t.Fatal(s)
	}
	if s := NameString([]byte{0}); s != "." {
		t.Fatal(s)
	}
	if _, err := AppendName(nil, "a..b"); !errors.Is(err, ErrLabel) {
		t.Fatal(err)
	}
}

func TestParseTypeAndRCode(t *testing.T) {
	for s, want := range map[string]uint16{"A": 1, "aaaa": 28, "TYPE65000": 65000, "txt": 16} {
		if got, err := ParseType(s); err != nil || got != want {
			t.Errorf("ParseType(%q) = %d, %v", s, got, err)
		}
	}
	if _, err := ParseType("BOGUS"); err == nil {
		t.Error("ParseType(BOGUS) succeeded")
	}
	for s, want := range map[string]uint8{"NOERROR": 0, "nxdomain": 3, "REFUSED": 5, "15": 15} {
		if got, err := ParseRCode(s); err != nil || got != want {
			t.Errorf("ParseRCode(%q) = %d, %v", s, got, err)
		}
	}
	if _, err := ParseRCode("16"); err == nil {
		t.Error("ParseRCode(16) succeeded")
	}
	if RCodeString(3) != "NXDOMAIN" || RCodeString(12) != "RCODE12" || TypeString(99) != "TYPE99" {
		t.Error("names")
	}
}

func TestParseAllocatesNothing(t *testing.T) {
	msg := mustQuery(t, 1, "host-123.example.test.", 1, 1232)
	var sink uint64
	allocs := testing.AllocsPerRun(1000, func() {
		q, err := ParseQuestion(msg)
		if err != nil {
			t.Fatal(err)
		}
		sink += q.Hash(42)
		SetID(msg, uint16(sink))
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per parse", allocs)
	}
}

func BenchmarkParseAndHash(b *testing.B) {
	msg := mustQuery(b, 1, "host-123.example.test.", 1, 1232)
	var sink uint64
	b.ReportAllocs()
	for b.Loop() {
		h, _ := ParseHeader(msg)
		q, _ := ParseQuestion(msg)
		sink += q.Hash(42) + uint64(h.ID)
	}
	_ = sink
}

func FuzzParseQuestion(f *testing.F) {
	f.Add(mustQuery(f, 1, "a.example.", 1, 0))
	f.Add(mustQuery(f, 1, "WWW.example.test.", 28, 4096))
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12})
	f.Fuzz(func(t *testing.T, msg []byte) {
		if _, err := ParseHeader(msg); err != nil {
			return
		}
		q, err := ParseQuestion(msg)
		if err != nil {
			return
		}
		if q.End > len(msg) || len(q.Name) == 0 || q.Name[len(q.Name)-1] != 0 || len(q.Name) > MaxNameLen {
			t.Fatalf("question %+v out of a %d-byte message", q, len(msg))
		}
		// A case-flipped copy is Equal and hashes the same.
		flipped := bytes.Clone(msg)
		for i := HeaderLen; i < HeaderLen+len(q.Name); i++ {
			c := flipped[i]
			if 'a' <= c && c <= 'z' {
				flipped[i] = c - 'a' + 'A'
			}
		}
		r, err := ParseQuestion(flipped)
		if err != nil {
			t.Fatalf("flipped copy: %v", err)
		}
		if !q.Equal(&r) || q.Hash(5) != r.Hash(5) {
			t.Fatalf("case-flipped question differs: %q vs %q", q.Name, r.Name)
		}
		_ = q.String()
	})
}
