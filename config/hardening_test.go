package config

import (
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/fastudp/fastudp/core"
)

// TestAdmissionConfigShares: each shard gets rate/shards and ceil(burst /
// shards), except under hash steering on the client IP with whole-address
// sources, where a source's flows all land on one shard.
func TestAdmissionConfigShares(t *testing.T) {
	c := Default()
	if ac := c.AdmissionConfig(4); ac != (core.AdmissionConfig{}) {
		t.Fatalf("default: %+v, want off", ac)
	}
	c.SourceLimit.Rate = 100
	want := core.AdmissionConfig{Interval: 40 * time.Millisecond, Burst: 25, PrefixV4: 32, PrefixV6: 128, TableSize: DefaultSourceTableSize}
	if ac := c.AdmissionConfig(4); ac != want {
		t.Fatalf("rate 100 over 4 shards: %+v, want %+v", ac, want)
	}
	c.SourceLimit.Burst = 5
	if ac := c.AdmissionConfig(4); ac.Burst != 2 {
		t.Fatalf("burst 5 over 4 shards: %d, want 2", ac.Burst)
	}
	c.Steering, c.SteeringKey = SteeringHash, SteeringKeyIP
	if ac := c.AdmissionConfig(4); ac.Interval != 10*time.Millisecond || ac.Burst != 5 {
		t.Fatalf("ip steering: %+v, want the whole rate and burst", ac)
	}
	c.SourceLimit.PrefixV6 = 64
	if ac := c.AdmissionConfig(4); ac.Interval != 40*time.Millisecond {
		t.Fatalf("ip steering with /64 sources: %+v, want a quarter", ac)
	}
	if _, err := core.NewManager(core.Config{Admission: c.AdmissionConfig(4)}); err != nil {
		t.Fatal(err)
	}
}

func TestHardeningKeysValidate(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"source_prefix_v4 = 33", `key "source_prefix_v4": 33 is outside 1..32`},
		{"source_prefix_v6 = 0", `key "source_prefix_v6": 0 is outside 1..128`},
		{"source_table_size = 10", `key "source_table_size": 10 is outside 64..4194304`},
		{"source_flow_rate = -1", `key "source_flow_rate": -1 is outside 0..10000000`},
		{"source_flow_burst = 2000000", `key "source_flow_burst": 2000000 is outside 0..1048576`},
	} {
		_, err := Parse([]byte(tc.text+"\n"+minimalTOML), "t.toml")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.text, err, tc.want)
		}
	}
	text := strings.Replace(minimalTOML, "name = \"c\"\n", "name = \"c\"\nmax_amplification = -2\n", 1)
	_, err := Parse([]byte(text), "t.toml")
	if err == nil || !strings.Contains(err.Error(), `key "max_amplification": -2 is negative`) {
		t.Errorf("negative max_amplification: %v", err)
	}
}

func TestHardeningFlags(t *testing.T) {
	var f Flags
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f.Register(fs)
	if err := fs.Parse([]string{"--listen", "127.0.0.1:53", "--backend", "10.0.0.1:53", "--source-flow-rate", "50", "--max-amplification", "3"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.Config()
	if err != nil {
		t.Fatal(err)
	}
	if c.SourceLimit.Rate != 50 || c.Clusters[0].MaxAmplification != 3 || c.Clusters[0].AmplificationAllowance != DefaultAmplificationAllowance {
		t.Fatalf("flags gave %+v, max_amplification %d", c.SourceLimit, c.Clusters[0].MaxAmplification)
	}
	f.SourceRate = "fast"
	if _, err := f.Config(); err == nil || !strings.Contains(err.Error(), "--source-flow-rate") {
		t.Fatalf("bad --source-flow-rate: %v", err)
	}
}
