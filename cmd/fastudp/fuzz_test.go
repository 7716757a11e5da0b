package main

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzCtlArgs feeds `fastudp ctl` command lines (arguments separated by NUL)
// to its parser, which sends nothing: it must not panic, every refusal is a
// usage error (exit status 2), and an accepted command has a positive
// timeout and a control path.
func FuzzCtlArgs(f *testing.F) {
	for _, s := range []string{
		"status", "backends\x00dns", "backend\x00add\x00dns\x0010.0.0.1:53\x00--weight\x0050",
		"--json\x00backend\x00weight\x00dns\x00[::1]:53\x007", "flows\x00--limit=10", "backend\x00drain\x00q\x001.2.3.4:5",
		"--timeout\x00-1s\x00status", "--control=\x00reload", "backend\x00remove\x00\x001.2.3.4:5", "help", "--help",
		"backend\x00undrain\x00c\x00[fe80::1%eth0]:53\x00--\x00--json", "flows\x00--limit\x009999999999999999999",
		"backend\x00add\x00q\x0010.0.0.1:443\x00--server-id\x000x0a01\x00--backup", "backend\x00add\x00q\x0010.0.0.1:443\x00--server-id=zz",
		"backend\x00backup\x00q\x0010.0.0.1:443\x00on", "backend\x00backup\x00q\x0010.0.0.1:443\x00maybe", "backend\x00add\x00q\x001.2.3.4:5\x00--backup=false",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var args []string
		if line != "" {
			args = strings.Split(line, "\x00")
		}
		req, o, err := parseCtl(args, io.Discard, io.Discard)
		if err != nil {
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("%q: refusal %v is not a usage error", args, err)
			}
			if req != nil {
				t.Fatalf("%q: a request with an error", args)
			}
			return
		}
		if req != nil && (o.timeout <= 0 || o.control == "") {
			t.Fatalf("%q: accepted with timeout %v, control %q", args, o.timeout, o.control)
		}
	})
}
