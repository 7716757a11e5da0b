# fastudp — build, test and measure.
# `make test` is the command README and CI run; keep them in step.

GO       ?= go
PKGS     := ./...
# Packages with goroutines, locks or shared state get -race.
RACE_PKGS := ./batchio/... ./cmd/... ./dns/... ./health/... ./control/... ./quiclb/...
# A count, not a duration: go1.26's fuzz coordinator can fail a duration-bound
# run with a spurious "context deadline exceeded" when the machine is loaded
# (golang/go#75804, fixed in go1.27). 100000 executions take 1-15 s per target.
FUZZTIME ?= 100000x
BENCHTIME ?= 1s
BENCHCOUNT ?= 3

.PHONY: build demo test lint vet fmt-check unit race fuzz fuzz-smoke bench bench-core bench-core-short clean

build:
	$(GO) build -o bin/fastudp ./cmd/fastudp

## demo: two echo backends and the proxy on loopback, with a live table.
demo:
	$(GO) run ./cmd/fastudp demo --duration $(or $(DURATION),5s)

## test: vet, format check, unit and integration tests, race tests, short fuzz smoke.
test: lint unit race fuzz-smoke

lint: vet fmt-check

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l .); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The bench packages measure exact counts and latencies over loopback: they
# run after the rest, one package at a time, so other tests' load cannot make
# the kernel drop their datagrams.
unit:
	$(GO) test -count=1 $$($(GO) list $(PKGS) | grep -v '/bench/')
	$(GO) test -count=1 -p 1 ./bench/...

race:
	$(GO) test -count=1 -race $(RACE_PKGS)

# fuzz-smoke runs every fuzz target briefly (Go allows one target per -fuzz run).
fuzz-smoke:
	@set -e; for pkg in $$($(GO) list $(PKGS)); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $(FUZZFLAGS) $$pkg; \
	  done; \
	done

## fuzz: longer fuzzing of every target (FUZZTIME_LONG=5m make fuzz; a count
## such as 2000000x also works). go test's 10-minute timeout is lifted.
fuzz:
	$(MAKE) fuzz-smoke FUZZTIME=$(or $(FUZZTIME_LONG),2m) FUZZFLAGS=-timeout=0

## bench: the core benchmarks briefly, then `fastudp bench` with every scenario
## and target (under 10 minutes on the 2-core machine; report, results.json and
## SVG charts in bench-out/). BENCHARGS changes the run, e.g.
## BENCHARGS="small-pps dns-qps --targets fastudp,floor,nginx --runs 5".
BENCHARGS ?= --duration 2s --runs 3 --out bench-out
bench: bench-core-short build
	./bin/fastudp bench $(BENCHARGS)

## bench-core: the core benchmarks in full, -benchmem, BENCHCOUNT runs of BENCHTIME
## each (bench/RESULTS.md records the figures; BENCHFLAGS=-short skips the
## 1M-flow cases).
bench-core:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) -count=$(BENCHCOUNT) $(BENCHFLAGS) ./core/...

bench-core-short:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=200ms -count=1 -short ./core/...

clean:
	rm -rf bin
