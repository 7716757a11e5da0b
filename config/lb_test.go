package config

import (
	"strings"
	"testing"
)

// TestLBValues: the five policies parse, print back and survive a round trip
// through MarshalTOML; the default is maglev.
func TestLBValues(t *testing.T) {
	if got := minimal(t).Clusters[0].LB; got != LBMaglev {
		t.Errorf("default lb %v", got)
	}
	for _, tc := range []struct {
		name string
		want LB
	}{{"maglev", LBMaglev}, {"hrw", LBHRW}, {"rr", LBRR}, {"random", LBRandom}, {"p2c", LBP2C}} {
		text := strings.Replace(minimalTOML, "name = \"c\"\n\n", "name = \"c\"\nlb = \""+tc.name+"\"\n\n", 1)
		c, err := Parse([]byte(text), "lb.toml")
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := c.Clusters[0].LB; got != tc.want || got.String() != tc.name {
			t.Errorf("lb = %q: %v", tc.name, got)
		}
		out, err := c.MarshalTOML()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(out, "marshalled.toml")
		if err != nil || back.Clusters[0].LB != tc.want {
			t.Errorf("%s: round trip gave %v, %v", tc.name, back, err)
		}
	}
	text := strings.Replace(minimalTOML, "name = \"c\"\n\n", "name = \"c\"\nlb = \"least_conn\"\n\n", 1)
	if _, err := Parse([]byte(text), "lb.toml"); err == nil ||
		!strings.Contains(err.Error(), `key "lb": "least_conn" is not valid, want maglev, hrw, rr, random or p2c`) {
		t.Errorf("unknown lb: %v", err)
	}
}

// TestBackendBackup: backup defaults to false, parses as a boolean only, and
// is written back by MarshalTOML when set.
func TestBackendBackup(t *testing.T) {
	if minimal(t).Clusters[0].Backends[0].Backup {
		t.Error("backup defaults to true")
	}
	text := minimalTOML + "  backup = true\n\n  [[cluster.backend]]\n  address = \"127.0.0.1:5302\"\n"
	c, err := Parse([]byte(text), "backup.toml")
	if err != nil {
		t.Fatal(err)
	}
	if bs := c.Clusters[0].Backends; !bs[0].Backup || bs[1].Backup {
		t.Fatalf("backups %+v", bs)
	}
	out, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), "backup = true"); n != 1 {
		t.Errorf("MarshalTOML wrote backup = true %d times:\n%s", n, out)
	}
	back, err := Parse(out, "marshalled.toml")
	if err != nil {
		t.Fatal(err)
	}
	equalConfigs(t, back, c)
	if _, err := Parse([]byte(minimalTOML+"  backup = \"yes\"\n"), "backup.toml"); err == nil ||
		!strings.Contains(err.Error(), `key "backup"`) {
		t.Errorf("backup = \"yes\": %v", err)
	}
}

// TestFlagLB: --lb sets the quick-start cluster's policy, with the config
// file's rules and the flag named in errors.
func TestFlagLB(t *testing.T) {
	for _, name := range []string{"maglev", "hrw", "rr", "random", "p2c"} {
		f := parseFlags(t, "--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53", "--lb", name)
		c, err := f.Config()
		if err != nil {
			t.Fatalf("--lb %s: %v", name, err)
		}
		if got := c.Clusters[0].LB.String(); got != name {
			t.Errorf("--lb %s: lb %s", name, got)
		}
		if g := f.Given(); len(g) != 3 || g[2] != "--lb" && g[1] != "--lb" {
			t.Errorf("--lb %s: given %v", name, g)
		}
	}
	_, err := parseFlags(t, "--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53", "--lb", "wrr").Config()
	if err == nil || err.Error() != `--lb: "wrr" is not valid, want maglev, hrw, rr, random or p2c` {
		t.Errorf("--lb wrr: %v", err)
	}
}
