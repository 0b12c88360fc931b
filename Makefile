# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# python3-xxhash, python3-zstandard and python3-boto3: `tzero serve-backup` reads backups (s3:// ones
# too) inside nbdkit's embedded Python, which sees Debian's packages only, never the .venv.
# python3-tqdm: the progress bar (Debian's, seen through --system-site-packages); man-db: `man`
# for the man pages make setup builds. python3-cryptography: `tzero certs`. iproute2 and
# openssl: the multi-host tests (network namespaces, certificate checks).
APT_PACKAGES := nbdkit nbdkit-plugin-python libnbd-bin python3-libnbd python3-cffi \
	python3-venv qemu-utils fio fdisk e2fsprogs \
	python3-xxhash python3-zstandard python3-boto3 python3-tqdm man-db python3-cryptography iproute2 \
	openssl

.PHONY: setup lint test check demo clean install

# Man pages and bash completion, made from the parser (controller/cli/manpage.py, completion.py)
# into the virtualenv's share/: `man -M .venv/share/man tzero`; `make install` copies them.
SHARE := $(VENV)/share
MAN_PAGES := $(SHARE)/man/man1/tzero.1
COMPLETION := $(SHARE)/bash-completion/completions/tzero
CLI_SOURCES := $(wildcard controller/cli/*.py) controller/errors.py common/units.py

setup: $(STAMP) $(MAN_PAGES) $(COMPLETION)

$(MAN_PAGES): $(STAMP) $(CLI_SOURCES)
	rm -f $(SHARE)/man/man1/tzero*.1
	$(PY) -m controller.cli.manpage $(SHARE)/man/man1

$(COMPLETION): $(STAMP) $(CLI_SOURCES)
	mkdir -p $(dir $@)
	$(PY) -m controller.cli.completion bash > $@.tmp && mv $@.tmp $@

# apt-get runs only when a package is missing, so `make setup` is idempotent and quick.
$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test,docs]'
	touch $(STAMP)

# Lint and types: ruff (rules in pyproject.toml) over everything, mypy --strict over the packages.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The fast loop: lint, then everything but the VM guests and the demo.
check: lint
	$(PY) -m pytest -q -m 'not vm and not demo' $(PYTEST_ARGS)

# Everything, VM guests included: the kit is built first, and a missing kit is then a failure.
test: lint vm
	TZERO_REQUIRE_VM=1 $(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(PY) -m testkit.demo

clean:
	rm -rf $(VENV) .pytest_cache

# tzero on PATH for everyone, its man pages, bash completion and systemd units (docs/service.md).
# The wrapper runs this checkout's virtualenv: keep the checkout where it is. DESTDIR stages
# the files elsewhere (packaging, tests); without it systemd is told to reload its units.
PREFIX ?= /usr/local
BINDIR := $(PREFIX)/bin
UNITDIR ?= $(PREFIX)/lib/systemd/system
UNITS := $(wildcard systemd/*.service systemd/*.socket)
install: setup
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(UNITDIR)
	printf '#!/bin/sh\nexec %s "$$@"\n' "$(abspath $(VENV))/bin/tzero" > $(DESTDIR)$(BINDIR)/tzero
	chmod 755 $(DESTDIR)$(BINDIR)/tzero
	install -m 644 $(SHARE)/man/man1/tzero*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -m 644 $(COMPLETION) $(DESTDIR)$(PREFIX)/share/bash-completion/completions/tzero
	for u in $(UNITS); do \
		sed 's|@BINDIR@|$(BINDIR)|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
		chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# The benchmarks against qemu-storage-daemon, nbdkit's file plugin and nbdcopy (bench/run.py):
# results in bench/results/*.json, tables in BENCHMARKS.md, the plot in docs/bench-latency.png.
BENCH_APT := qemu-system-x86 python3-matplotlib fio libnbd-bin

.PHONY: bench
bench: setup
	@missing=$$(for p in $(BENCH_APT); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	$(PY) bench/run.py $(BENCH_ARGS)

# Last, so that `make` alone still means `make setup`.
-include vm/vm.mk
