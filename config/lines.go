package config

import (
	"sort"
	"strconv"
)

// keyLines maps the path of every key, table header and array element of a
// TOML document to the line it starts on (the first occurrence wins). Paths
// name array elements by index, as the decoder does: "batch_size",
// "cluster[1]", "cluster[1].backend[0].weight", "upstream_sources[2]".
//
// BurntSushi/toml keeps key positions private, and keeps one per dotted key
// name, so every [[cluster]] would share the last one's line. This scanner
// runs only after the library has accepted the document, so it need not
// diagnose anything; on any input it terminates and never panics (FuzzParse).
func keyLines(src []byte) map[string]int {
	s := lineScanner{src: src, out: make(map[string]int), aot: make(map[string]int)}
	for i, c := range src {
		if c == '\n' {
			s.nl = append(s.nl, i)
		}
	}
	for s.skipSpace(true); s.i < len(s.src); s.skipSpace(true) {
		if s.src[s.i] == '[' {
			s.header()
		} else {
			s.keyValue(s.table)
		}
	}
	return s.out
}

type lineScanner struct {
	src   []byte
	i     int
	nl    []int          // offsets of '\n'
	out   map[string]int // path → line
	aot   map[string]int // array-of-tables path → elements seen so far
	table string         // path of the current table
}

func (s *lineScanner) record(path string, off int) {
	if _, ok := s.out[path]; !ok {
		s.out[path] = sort.SearchInts(s.nl, off) + 1
	}
}

func (s *lineScanner) peek(k int) byte {
	if s.i+k < len(s.src) {
		return s.src[s.i+k]
	}
	return 0
}

// skipSpace skips blanks and comments, and newlines when nl is set.
func (s *lineScanner) skipSpace(nl bool) {
	for s.i < len(s.src) {
		switch s.src[s.i] {
		case ' ', '\t', '\r':
			s.i++
		case '\n':
			if !nl {
				return
			}
			s.i++
		case '#':
			for s.i < len(s.src) && s.src[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

// header reads "[a.b]" or "[[a.b]]" and makes it the current table. A dotted
// segment naming an array of tables refers to its latest element.
func (s *lineScanner) header() {
	start := s.i
	arr := s.peek(1) == '['
	if arr {
		s.i += 2
	} else {
		s.i++
	}
	keys := s.key()
	for s.i < len(s.src) && s.src[s.i] != ']' && s.src[s.i] != '\n' {
		s.i++
	}
	for s.i < len(s.src) && s.src[s.i] == ']' {
		s.i++
	}
	path := ""
	for j, k := range keys {
		path = joinPath(path, k)
		if arr && j == len(keys)-1 {
			n := s.aot[path]
			s.aot[path] = n + 1
			s.record(path, start)
			path = indexPath(path, n)
		} else if n := s.aot[path]; n > 0 {
			path = indexPath(path, n-1)
		}
		s.record(path, start)
	}
	s.table = path
}

// keyValue reads "key = value" (the key possibly dotted) under base.
func (s *lineScanner) keyValue(base string) {
	start := s.i
	keys := s.key()
	if len(keys) == 0 {
		s.i++ // not a key: step over it so that scanning always advances
		return
	}
	path := base
	for _, k := range keys {
		path = joinPath(path, k)
		s.record(path, start)
	}
	s.skipSpace(false)
	if s.peek(0) == '=' {
		s.i++
	}
	s.skipSpace(false)
	s.value(path)
}

// key reads a possibly dotted key of bare and quoted segments.
func (s *lineScanner) key() []string {
	var keys []string
	for {
		s.skipSpace(false)
		if s.i >= len(s.src) {
			return keys
		}
		switch c := s.src[s.i]; {
		case c == '"' || c == '\'':
			start := s.i
			s.str()
			keys = append(keys, unquoteKey(string(s.src[start:s.i])))
		case isBareKeyByte(c):
			start := s.i
			for s.i < len(s.src) && isBareKeyByte(s.src[s.i]) {
				s.i++
			}
			keys = append(keys, string(s.src[start:s.i]))
		default:
			return keys
		}
		s.skipSpace(false)
		if s.peek(0) != '.' {
			return keys
		}
		s.i++
	}
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func unquoteKey(q string) string {
	if len(q) >= 2 && q[0] == '\'' && q[len(q)-1] == '\'' {
		return q[1 : len(q)-1]
	}
	if u, err := strconv.Unquote(q); err == nil {
		return u
	}
	if len(q) >= 2 {
		return q[1 : len(q)-1]
	}
	return q
}

// value skips one value, recording the elements of arrays and the keys of
// inline tables under path. It always advances.
func (s *lineScanner) value(path string) {
	if s.i >= len(s.src) {
		return
	}
	switch s.src[s.i] {
	case '[':
		s.i++
		for n := 0; ; {
			s.skipSpace(true)
			if s.i >= len(s.src) {
				return
			}
			switch s.src[s.i] {
			case ']':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			elem := indexPath(path, n)
			s.record(elem, s.i)
			s.value(elem)
			n++
		}
	case '{':
		s.i++
		for {
			s.skipSpace(true)
			if s.i >= len(s.src) {
				return
			}
			switch s.src[s.i] {
			case '}':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			s.keyValue(path)
		}
	case '"', '\'':
		s.str()
	default:
		start := s.i
		for s.i < len(s.src) {
			switch s.src[s.i] {
			case ' ', '\t', '\r', '\n', ',', ']', '}', '#':
				if s.i == start {
					s.i++
				}
				return
			}
			s.i++
		}
	}
}

// str skips a basic, literal or multi-line string starting at s.i.
func (s *lineScanner) str() {
	q := s.src[s.i]
	if s.peek(1) == q && s.peek(2) == q {
		s.i += 3
		for s.i < len(s.src) {
			c := s.src[s.i]
			if c == '\\' && q == '"' {
				s.i += 2
				continue
			}
			if c == q && s.peek(1) == q && s.peek(2) == q {
				s.i += 3
				// Up to two more quotes may end the content: """a"""""
				for k := 0; k < 2 && s.peek(0) == q; k++ {
					s.i++
				}
				return
			}
			s.i++
		}
		s.i = min(s.i, len(s.src))
		return
	}
	s.i++
	for s.i < len(s.src) {
		c := s.src[s.i]
		switch {
		case c == '\\' && q == '"':
			s.i += 2
			continue
		case c == q:
			s.i++
			return
		case c == '\n':
			return
		}
		s.i++
	}
	s.i = min(s.i, len(s.src))
}
