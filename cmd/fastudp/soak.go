package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/fastudp/fastudp/bench/soak"
)

// soakCommand implements `fastudp bench soak`: fastudp under a mixed load
// for --duration, reporting its open descriptors, goroutines and RSS at the
// start and the end as a markdown table.
func soakCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fastudp bench soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o soak.Options
	fs.DurationVar(&o.Duration, "duration", 10*time.Minute, "time under load after the warmup")
	fs.DurationVar(&o.Warmup, "warmup", 15*time.Second, "load before the start sample")
	fs.DurationVar(&o.Sample, "sample", 5*time.Second, "sampling interval")
	fs.DurationVar(&o.Reconfigure, "reconfigure", 2*time.Second, "interval between control-API changes")
	fs.IntVar(&o.Shards, "shards", 2, "fastudp's shards")
	fs.StringVar(&o.Bin, "bin", "", "fastudp binary (default: this one)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{code: 2}
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, err: fmt.Errorf("bench soak: unexpected argument %q", fs.Arg(0))}
	}
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench soak: %w", err)
		}
		o.Bin = exe
	}
	o.Progress = stderr
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	r, err := soak.Run(ctx, o)
	if err != nil {
		return err
	}
	r.Markdown(stdout, strings.TrimSpace("fastudp bench soak "+strings.Join(args, " ")))
	return nil
}
