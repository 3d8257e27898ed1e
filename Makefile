# The commands the README gives. Each target builds its own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The compiled build (setup.py: the hot modules through mypyc), installed as a package (not
# editable) in its own virtualenv, and tested from a copy of the tree without resolver/ and
# policy/, so that the tests import the installed extension modules, not the checkout's files.
CVENV  ?= .venv-compiled
CPY    := $(CVENV)/bin/python
CSTAMP := $(CVENV)/.installed
CTESTS := build/compiled-tests
SOURCES := setup.py $(shell find policy resolver -name '*.py' -o -name '*.yaml' 2>/dev/null)
# Debian packages the tests, the demo and the benchmarks drive.
# gcc and python3-dev: mypyc's C compiler and Debian's Python headers (the compiled build).
SYSPKGS := iproute2 ipset nftables bind9-dnsutils dnsperf dnsmasq-base systemd nodejs unbound conntrack iperf3 \
	gcc python3-dev
SYSBINS := ip ipset nft dig dnsperf dnsmasq systemd-analyze node unbound conntrack iperf3 gcc

.PHONY: all venv venv-compiled sysdeps test test-unit test-integration test-compiled test-netns \
	test-package test-netns-compiled bench bench-compiled demo lint deb clean soak soak-compiled \
	profile fuzz instructions

all: test

$(STAMP): pyproject.toml
	@# Debian's python3 needs python3-venv for this; install it when missing (root only).
	$(PYTHON) -m venv $(VENV) || { [ "$$(id -u)" = 0 ] && rm -rf $(VENV) && \
	  debian/apt-install python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[fast,test,dev]'
	touch $@

venv: $(STAMP)

# `pip install .` (build isolation: setuptools and mypy from pyproject's build-system) compiles;
# the install is redone whenever a source file changes. It fails when the result is not the
# compiled build (no C compiler, no Python.h: setup.py then builds the interpreted one).
$(CSTAMP): pyproject.toml $(SOURCES) | sysdeps
	[ -x $(CPY) ] || $(PYTHON) -m venv $(CVENV) || { [ "$$(id -u)" = 0 ] && rm -rf $(CVENV) && \
	  debian/apt-install python3-venv && $(PYTHON) -m venv $(CVENV); }
	$(CPY) -m pip install -q --upgrade pip
	@echo "building and installing the compiled build in $(CVENV)"
	@start=$$(date +%s); env -u RESOLVERD_PURE $(CPY) -m pip install -q --force-reinstall --no-deps . && \
	  $(CPY) -m pip install -q '.[fast,test]' && \
	  echo "compiled build installed in $$(( $$(date +%s) - start )) s"
	cd / && $(abspath $(CPY)) -c 'from resolver import buildinfo; from resolver.dns import wire; \
	  b = buildinfo.build(); assert b == "compiled", "$(CVENV) holds the %s build: %s" % (b, wire.__file__)'
	touch $@

venv-compiled: $(CSTAMP)

# Installs the Debian tools when one is missing (needs root; CI is root).
sysdeps:
	@missing=""; for b in $(SYSBINS); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "missing:$$missing; run 'make sysdeps' as root" >&2; exit 1; fi; \
	  debian/apt-install $(SYSPKGS); \
	fi

# tests/fuzz: the fuzz corpus replayed, then atheris on each target for FUZZ_SECONDS in all.
# The .deb (test-package) and .venv-compiled are built side by side: each spends a minute in
# one gcc on mypyc's C, and there are two cores. The netns tier runs beside them: it mostly
# waits on the kernel and its lab (57 s of CPU in 3 min). Then the compiled build's tiers.
test: venv sysdeps
	RESOLVERD_EXPECT_BUILD=interpreted \
	  $(PY) -m pytest tests/unit tests/integration tests/fuzz -q
	$(MAKE) -j3 --output-sync=target test-netns test-package venv-compiled
	$(MAKE) test-compiled

# The compiled build's tests and benchmarks run from a copy of the checkout without resolver/ and
# policy/ (the tests and the files they read: README, systemd/, debian/, contrib/), with the
# compiled venv's python, so that they import the installed extensions. shared/ (the seed
# table) is linked beside the copy as it sits beside the checkout.
define compiled_copy
	rm -rf $(CTESTS) && mkdir -p $(CTESTS)/resolverd
	git ls-files -z --cached --others --exclude-standard -- . ':!resolver' ':!policy' ':!build' | \
	  xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh | \
	  tar --null -T - -cf - | tar -C $(CTESTS)/resolverd -xf -
	[ ! -d ../shared ] || ln -s $(abspath ../shared) $(CTESTS)/shared
endef

# The unit and integration tiers on the compiled build.
test-compiled: venv-compiled sysdeps
	$(compiled_copy)
	cd $(CTESTS)/resolverd && RESOLVERD_EXPECT_BUILD=compiled \
	  $(abspath $(CPY)) -m pytest tests/unit tests/integration -q -p no:cacheprovider

# The first-packet, split-DNS, failover and crash tests (netns, root) on the compiled build; not
# in make test, which keeps CI under ten minutes.
test-netns-compiled: venv-compiled sysdeps
	$(compiled_copy)
	cd $(CTESTS)/resolverd && RESOLVERD_EXPECT_BUILD=compiled $(abspath $(CPY)) -m pytest -q \
	  -p no:cacheprovider tests/netns/test_e2e.py tests/netns/test_split_dns.py \
	  tests/netns/test_failover.py tests/netns/test_crash.py

# The benchmarks on the compiled build (the results land in the copy's tests/bench/results).
bench-compiled: venv-compiled sysdeps
	$(compiled_copy)
	cd $(CTESTS)/resolverd && $(abspath $(CPY)) -m pytest tests/bench -q -s -m bench --tb=short \
	  -p no:cacheprovider $(BENCH_ARGS)

test-unit: venv sysdeps
	RESOLVERD_EXPECT_BUILD=interpreted $(PY) -m pytest tests/unit -q -m unit

test-integration: venv
	RESOLVERD_EXPECT_BUILD=interpreted $(PY) -m pytest tests/integration -q -m integration

test-netns: venv sysdeps
	$(PY) -m pytest tests/netns -q -m netns

# The fuzzers alone, longer: FUZZ_SECONDS=600 make fuzz (FUZZ_CORPUS=DIR keeps what they find).
fuzz: venv
	FUZZ_SECONDS=$${FUZZ_SECONDS:-300} $(PY) -m pytest tests/fuzz -q -s -m fuzz

# Builds the .deb (make deb), installs, runs, upgrades and purges it in a namespace (root).
test-package: venv sysdeps
	$(PY) -m pytest tests/package -q -m package

# The Debian package, $(DIST)/resolverd_VERSION_ARCH.deb, built with dpkg-buildpackage and
# dh-virtualenv from a clean copy of the tree, then checked with lintian (debian/build-deb).
# As root it installs the missing build packages; otherwise it names them and stops.
DIST ?= dist
deb:
	debian/build-deb $(DIST)

bench: venv sysdeps
	$(PY) -m pytest tests/bench -q -s -m bench --tb=short $(BENCH_ARGS)

# Not part of test or bench. SOAK_SECONDS=60 shortens it; SOAK_QPS=N skips the rate burst.
soak: venv sysdeps
	$(PY) -m pytest tests/bench/test_soak.py -q -s -m soak --tb=short

# The soak on the compiled build, from the same copy as test-compiled.
soak-compiled: venv-compiled sysdeps
	$(compiled_copy)
	cd $(CTESTS)/resolverd && $(abspath $(CPY)) -m pytest tests/bench/test_soak.py -q -s -m soak \
	  --tb=short -p no:cacheprovider

# cProfile, py-spy and tracemalloc of the miss path; tables in tests/bench/results/profile-*.txt
profile: venv sysdeps
	-$(PY) -m pip install -q py-spy
	$(PY) -m tests.bench.profiling

# Instructions per miss, counted by callgrind on the compiled build (tests/bench/instructions.py):
# the figure to compare before and after a change to the hot path, which the miss bench's
# run-to-run swing hides. Root; valgrind comes from Debian when it is missing.
instructions: venv-compiled sysdeps
	command -v valgrind >/dev/null || debian/apt-install valgrind
	$(compiled_copy)
	cd $(CTESTS)/resolverd && $(abspath $(CPY)) -m tests.bench.instructions

demo: venv sysdeps
	$(PY) -m tests.demo

lint: venv
	$(VENV)/bin/ruff check policy resolver tests setup.py vulture_whitelist.py
	$(VENV)/bin/ruff format --check policy resolver tests setup.py vulture_whitelist.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/vulture

clean:
	find policy resolver -name '*.so' -delete
	rm -rf $(VENV) $(CVENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
