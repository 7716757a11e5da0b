// Command fastudp is a UDP load balancer and reverse proxy for Linux, built to
// front DNS and QUIC: per-core shards behind an SO_REUSEPORT group, batched
// recvmmsg/sendmmsg, one connected upstream socket per flow (symmetric NAT).
//
// Usage:
//
//	fastudp run --config FILE
//	fastudp run --listen ADDR --backend ADDR [--backend ADDR ...] [flags]
//	fastudp demo [--duration D]
//	fastudp bench [SCENARIO...] [--targets fastudp,floor,nginx,...] [--duration D] [--runs N] [--out DIR]
//	fastudp ctl [--control PATH] COMMAND ...
//	fastudp version
//
// It needs Linux (epoll, recvmmsg, IP_PKTINFO); any 5.x or 6.x kernel will do.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// version is set at link time (-ldflags "-X main.version=...").
var version = "dev"

// exitError carries a process exit status out of a subcommand.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

const usage = `fastudp: a UDP load balancer for DNS and QUIC

Usage:
  fastudp run --config FILE                       run with a TOML config
  fastudp run --listen ADDR --backend ADDR ...    run without a file (quick start)
  fastudp demo [--duration D]                     run a self-contained demo on loopback
  fastudp bench [SCENARIO...] [--targets T,...]   benchmark fastudp against its peers (bench -h)
  fastudp ctl [--control PATH] COMMAND ...        talk to a running fastudp (ctl -h)
  fastudp version                                 print the version

Run "fastudp run -h" for every flag; docs/configuration.md describes the file.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(args[1:], stdout, stderr)
	case "demo":
		err = demoCommand(args[1:], stdout, stderr)
	case "bench":
		err = benchCommand(args[1:], stdout, stderr)
	case "ctl":
		return runCtl(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "fastudp", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "fastudp: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "fastudp:", ee.err)
		}
		return ee.code
	}
	fmt.Fprintln(stderr, "fastudp:", err)
	return 1
}
