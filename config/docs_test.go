package config

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// TestDocsNameEveryKeyAndFlag keeps docs/configuration.md in step with the
// schema and the quick-start flags.
func TestDocsNameEveryKeyAndFlag(t *testing.T) {
	data, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, tb := range schemaTables {
		for _, k := range tb.keys {
			if tb.table == "" && (k == "listener" || k == "cluster") {
				if !strings.Contains(doc, "## `[["+k+"]]`") {
					t.Errorf("docs/configuration.md has no section for [[%s]]", k)
				}
				continue
			}
			if !strings.Contains(doc, "| `"+k+"` |") {
				t.Errorf("docs/configuration.md has no table row for key %q (%s)", k, tb.header)
			}
		}
	}
	var f Flags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f.Register(fs)
	n := 0
	fs.VisitAll(func(fl *flag.Flag) {
		n++
		if !strings.Contains(doc, "| `--"+fl.Name+" ") {
			t.Errorf("docs/configuration.md has no table row for flag --%s", fl.Name)
		}
	})
	if n != len(flagSpecs) {
		t.Errorf("Register defines %d flags, flagSpecs has %d", n, len(flagSpecs))
	}
}
