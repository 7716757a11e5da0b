package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that whatever it accepts
// marshals to text it accepts again with the same meaning, and that the line
// scanner terminates on any input.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("../testdata/config/*.toml")
	files = append(files, examplePath)
	for _, p := range files {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
	f.Add(demoTOML)
	f.Add([]byte(minimalTOML))
	f.Add([]byte("a = [{b = '''x\n'''}, \"\"\"y\"\"\"]\n[[a.b]]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		keyLines(data)
		c, err := Parse(data, "fuzz.toml")
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error %T is not *Error: %v", err, err)
			}
			return
		}
		text, err := c.MarshalTOML()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(text, "marshalled.toml")
		if err != nil {
			t.Fatalf("marshalled config does not parse: %v\n%s", err, text)
		}
		equalConfigs(t, back, c)
	})
}
