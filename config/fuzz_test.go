package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fastudp/fastudp/core"
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
		roundTrip(t, c)
	})
}

// FuzzFlags feeds quick-start command lines (arguments separated by NUL,
// --backend specs, durations and integers included) through the flag set and
// Flags.Config: no panic, every refusal of Config is an *Error naming a flag,
// and what it accepts marshals to a file that parses to the same config.
func FuzzFlags(f *testing.F) {
	for _, s := range []string{
		"--listen\x00127.0.0.1:53\x00--backend\x0010.0.0.1:53\x00--backend\x00[::1]:53\x00--responses\x001",
		"--listen=[::]:443\x00--backend=10.0.0.1:443\x00--idle-timeout\x001m30s\x00--lb\x00p2c\x00--affinity\x00datagram",
		"--listen\x000.0.0.0:53\x00--backend\x00127.0.0.1:5301\x00--mode\x00dns\x00--dns-sockets\x002\x00--dns-tcp=false\x00--health\x00dns\x00--health-dns-name\x00example.",
		"--listen\x00127.0.0.1:1\x00--backend\x001.2.3.4:5\x00--seed\x000xffffffffffffffff\x00--max-flows\x00-3\x00--gro=0\x00--source-flow-rate\x00100\x00--max-amplification\x003",
		"--listen\x00127.0.0.1:1\x00--backend\x00not-an-addr\x00--shards\x009999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var flags Flags
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		flags.Register(fs)
		if err := fs.Parse(strings.Split(line, "\x00")); err != nil {
			return // the flag package's own refusal
		}
		c, err := flags.Config()
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Flag == "" {
				t.Fatalf("refusal %T does not name a flag: %v", err, err)
			}
			return
		}
		roundTrip(t, c)
	})
}

// FuzzParseByteSize: no panic, nothing negative, and FormatByteSize writes
// what it accepts back as text it reads to the same value.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"8MiB", "4194304", " 1 GiB ", "1kB", "+1", "-1", "9223372036854775807", "9223372036854775807KiB", "0x10", "1_000", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("%q: %d", s, n)
		}
		if back, err := ParseByteSize(FormatByteSize(n)); err != nil || back != n {
			t.Fatalf("%q = %d, written %q, read back %d, %v", s, n, FormatByteSize(n), back, err)
		}
	})
}

// FuzzParseNames: every enum parser of the schema either refuses a string or
// accepts exactly the spelling its String method writes.
func FuzzParseNames(f *testing.F) {
	for _, s := range []string{"maglev", "p2c", "hash", "ip", "json", "debug", "dns", "close", "quic", "ip-port", "every", "", "MAGLEV"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(what string, ok bool, back string) {
			t.Helper()
			if ok && back != s {
				t.Fatalf("%s: %q accepted, written %q", what, s, back)
			}
		}
		if v, err := ParseLB(s); err == nil {
			check("lb", true, v.String())
		}
		if v, err := ParseSteering(s); err == nil {
			check("steering", true, v.String())
		}
		if v, err := ParseSteeringKey(s); err == nil {
			check("steering_key", true, v.String())
		}
		if v, err := ParseLogFormat(s); err == nil {
			check("log_format", true, v.String())
		}
		if v, err := ParseLogLevel(s); err == nil {
			check("log_level", true, logLevelName(v))
		}
		if v, err := ParseMode(s); err == nil {
			check("mode", true, v.String())
		}
		if v, err := ParseDownFlows(s); err == nil {
			check("down_flows", true, v.String())
		}
		if v, err := ParseHealthType(s); err == nil {
			check("health type", true, v.String())
		}
		if v, err := core.ParseAffinity(s); err == nil {
			check("affinity", true, v.String())
		}
		if v, err := core.ParseProxyMode(s); err == nil {
			check("proxy_protocol", true, v.String())
		}
	})
}
