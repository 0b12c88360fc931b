"""The VM boot kit (vm/build.py, vm/init) and the helper that boots guests (vm/guest.py)."""
