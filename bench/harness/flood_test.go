package harness

import (
	"slices"
	"testing"
)

func TestFloodNames(t *testing.T) {
	for _, r := range []float64{0, 12500, 25000, 1e6} {
		n := floodName(r)
		got, ok := parseFloodName(n)
		if !ok || got != r {
			t.Errorf("parseFloodName(%q) = %v, %v; want %v", n, got, ok, r)
		}
		if sc := findScenario(n); sc == nil || sc.name != n {
			t.Errorf("findScenario(%q) = %v", n, sc)
		}
	}
	for _, bad := range []string{"flood", "flood-", "flood-k", "flood-x", "flood--1k", "flood-5", "flood-NaNk", "flood-1e9k", "new-flow-flood"} {
		if _, ok := parseFloodName(bad); ok {
			t.Errorf("parseFloodName(%q) accepted", bad)
		}
	}
	got := expandFlood([]string{"small-pps", "flood", "latency"}, []float64{0, 50000})
	if want := []string{"small-pps", "flood-0", "flood-50k", "latency"}; !slices.Equal(got, want) {
		t.Errorf("expandFlood = %v, want %v", got, want)
	}
	o := Options{Scenarios: []string{"flood"}, Bin: "x"}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if len(o.Scenarios) != len(DefaultFloodRates) {
		t.Errorf("scenarios %v, want one per default rate", o.Scenarios)
	}
}

func FuzzParseFloodName(f *testing.F) {
	f.Add("flood-50k")
	f.Add("flood-0")
	f.Fuzz(func(t *testing.T, s string) {
		r, ok := parseFloodName(s)
		if !ok {
			return
		}
		if back, ok := parseFloodName(floodName(r)); !ok || back != r {
			t.Fatalf("%q: rate %v does not round-trip (%v, %v)", s, r, back, ok)
		}
	})
}
