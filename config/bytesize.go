package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// byteUnits are the suffixes ParseByteSize accepts, longest first so that
// "MiB" is not read as "B".
var byteUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9},
	{"B", 1},
}

// ParseByteSize parses a non-negative whole number of bytes with an optional
// unit: B, kB or KB (1000), MB, GB, KiB (1024), MiB, GiB; a space may
// separate number and unit. "8MiB" is 8388608.
func ParseByteSize(s string) (int64, error) {
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range byteUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 63)
	if err != nil || num == "" || num[0] == '+' {
		return 0, fmt.Errorf("%q is not a byte size (want a whole number with an optional unit: B, KB, MB, GB, KiB, MiB, GiB)", s)
	}
	if n > uint64(math.MaxInt64/mult) {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(n) * mult, nil
}

// FormatByteSize writes n with the largest binary unit that divides it
// exactly ("4MiB"), or as a plain number; ParseByteSize reads it back.
func FormatByteSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
