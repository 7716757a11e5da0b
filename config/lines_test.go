package config

import (
	"testing"
)

func Test_keyLines(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want map[string]int
	}{
		{"top", "a = 1\n\n# c = 3\nb = \"x # not a comment\"  # comment\n", map[string]int{"a": 1, "b": 4}},
		{"array-of-tables", "[[cluster]]\nname = 'x'\n\n[[cluster.backend]]\naddress = '1'\n[[cluster.backend]]\nweight = 2\n[[cluster]]\nname = 'y'\n",
			map[string]int{"cluster": 1, "cluster[0]": 1, "cluster[0].name": 2, "cluster[0].backend[0]": 4, "cluster[0].backend[0].address": 5,
				"cluster[0].backend[1]": 6, "cluster[0].backend[1].weight": 7, "cluster[1]": 8, "cluster[1].name": 9}},
		{"inline", "backend = [\n  { address = '1' },\n  { address = '2', weight = 3 },\n]\nnext = 1\n",
			map[string]int{"backend": 1, "backend[0]": 2, "backend[0].address": 2, "backend[1]": 3, "backend[1].weight": 3, "next": 5}},
		{"array", "s = [\n'a', # one\n'b',\n]\n", map[string]int{"s[0]": 2, "s[1]": 3}},
		{"multiline-strings", "a = \"\"\"\nb = 1\n\"\"\"\nc = '''\nd = 2'''\ne = \"\"\"x\"\"\"\"\"\nf = 3\n",
			map[string]int{"a": 1, "c": 4, "e": 6, "f": 7}},
		{"escaped-quote", "a = \"x\\\" b = 1\"\nc = 2\n", map[string]int{"a": 1, "c": 2}},
		{"quoted-and-dotted-keys", "\"quoted key\" = 1\nx.y = 2\n'lit' = 3\n", map[string]int{"quoted key": 1, "x": 2, "x.y": 2, "lit": 3}},
		{"table", "[t]\na = 1\n[t.u]\nb = 2\n", map[string]int{"t": 1, "t.a": 2, "t.u": 3, "t.u.b": 4}},
		{"subtable-of-array", "[[c]]\n[c.x]\na = 1\n[[c]]\n[c.x]\na = 2\n", map[string]int{"c[0].x.a": 3, "c[1].x": 5, "c[1].x.a": 6}},
		{"crlf", "a = 1\r\nb = 2\r\n", map[string]int{"a": 1, "b": 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := keyLines([]byte(tc.src))
			for p, l := range tc.want {
				if got[p] != l {
					t.Errorf("line of %s = %d, want %d (all: %v)", p, got[p], l, got)
				}
			}
			for _, absent := range []string{"b", "d"} {
				if tc.name == "multiline-strings" && got[absent] != 0 {
					t.Errorf("key %q inside a string was recorded", absent)
				}
			}
		})
	}
}
