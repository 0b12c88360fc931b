# The VM boot kit and the VM tests; the top-level Makefile does `-include vm/vm.mk`.
# See docs/vm.md. `make vm` is idempotent: a second run only checks the kit's fingerprint.

.PHONY: vm test-vm vm-clean

# Stdlib Python from Debian: the kit does not need the project's virtualenv.
vm:
	/usr/bin/python3 vm/build.py

# TZERO_REQUIRE_VM=1 turns "no kit, skip" into a failure: here the kit was just built.
test-vm: setup vm
	TZERO_REQUIRE_VM=1 $(PY) -m pytest -q -m vm $(PYTEST_ARGS)

vm-clean:
	rm -rf .cache/vm
