# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# python3-xxhash and python3-zstandard: `tzero serve-backup` reads backups inside nbdkit's
# embedded Python, which sees Debian's packages only, never the .venv.
APT_PACKAGES := nbdkit nbdkit-plugin-python libnbd-bin python3-libnbd python3-cffi \
	python3-venv qemu-utils fio fdisk e2fsprogs \
	python3-xxhash python3-zstandard

.PHONY: setup lint test check demo clean

setup: $(STAMP)

# apt-get runs only when a package is missing, so `make setup` is idempotent and quick.
$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
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
