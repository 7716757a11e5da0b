package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fastudp/fastudp/config"
)

// runCommand implements `fastudp run`.
func runCommand(args []string, _, stderr io.Writer) error {
	fs := flag.NewFlagSet("fastudp run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "read the configuration from `FILE` (TOML)")
	var quick config.Flags
	quick.Register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return &exitError{code: 2}
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, err: fmt.Errorf("run: unexpected argument %q", fs.Arg(0))}
	}
	cfg, err := loadConfig(*configPath, &quick)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	log := newLogger(stderr, cfg)
	warnLimits(log, cfg) // limits.go: raises RLIMIT_NOFILE, warns about limits too low
	return serve(cfg, *configPath, log)
}

// loadConfig reads the file, or builds the config from quick-start flags;
// mixing the two is an error.
func loadConfig(path string, quick *config.Flags) (*config.Config, error) {
	if path != "" {
		if given := quick.Given(); len(given) > 0 {
			return nil, fmt.Errorf("--config cannot be combined with quick-start flags (%s): put them in the file", given[0])
		}
		return config.Load(path)
	}
	if len(quick.Given()) == 0 {
		return nil, errors.New("run: give --config FILE, or --listen ADDR and --backend ADDR (see fastudp run -h)")
	}
	return quick.Config()
}

func newLogger(w io.Writer, cfg *config.Config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == config.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs the proxy until SIGINT or SIGTERM, then drains live flows for
// the grace period; a second signal stops at once. SIGHUP reloads the config
// file at path (see [proxy.reload]).
func serve(cfg *config.Config, path string, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Catch signals before the listeners open, so a signal that arrives as
	// soon as traffic flows still drains gracefully.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hups := make(chan os.Signal, 1)
	signal.Notify(hups, syscall.SIGHUP)
	defer signal.Stop(hups)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	// Started by an upgrade: take over the running process's sockets and
	// flows (see upgrade.go).
	t, err := takeoverFromEnv(cfg, log)
	if err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	p, err := startProxyWith(ctx, cfg, path, log, newUpgrader(), t)
	if err != nil {
		t.fail(err)
		return err
	}
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("cannot tell the service manager fastudp is ready", "err", err)
	}
	var sig os.Signal
	for sig == nil {
		select {
		case sig = <-sigs:
		case <-hups:
			p.logReload(p.reload())
		case <-usr2:
			go func() { _, _ = p.upgrade() }() // logs its outcome
		}
	}
	if p.upg.awaitUpgrade() {
		log.Info("stop signal after an upgrade: the new process serves on", "signal", sig.String())
		select {} // exitAfterHandover exits
	}
	log.Info("stopping: draining live flows", "signal", sig.String(), "grace", cfg.GracePeriod)
	go func() {
		if s, ok := <-sigs; ok {
			log.Warn("second signal: closing every flow now", "signal", s.String())
			cancel()
		}
	}()
	if err := p.stop(cfg.GracePeriod); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}
