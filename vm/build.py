#!/usr/bin/python3
"""Build the VM boot kit: a Debian kernel and a busybox initramfs, from Debian packages only.

    /usr/bin/python3 vm/build.py [--kit DIR] [--force]

The kit lands in DIR (default: <repo>/.cache/vm, or $TZERO_VM_KIT):

    vmlinuz      the kernel of the package that `apt-cache depends linux-image-amd64` names
    initrd.img   gzip'd newc cpio: busybox-static, vm/init as /init, the modules in load order
    kit.json     kernel version, module load order, and the fingerprint of the inputs

Running it again is quick: when kit.json's fingerprint matches this script, vm/init and the
module list, nothing is downloaded or rebuilt. --force rebuilds and re-asks apt which kernel
is current. Missing packages (busybox-static, kmod, qemu-system-x86) are installed with apt-get,
so a fresh Debian 12 machine needs nothing done by hand. The initramfs is byte-for-byte
reproducible for a given kernel package: fixed owners and timestamps, sorted entries.

Stdlib only: this runs before the project's virtualenv exists.
"""

import argparse
import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_KIT = REPO / ".cache" / "vm"

# What the guests need; modprobe adds the dependencies and orders them.
# crc32c_generic: ext4 with metadata_csum cannot mount without a crc32c driver.
# dm-mod carries the striped target; there is no separate dm-striped module.
MODULES = [
    "virtio_pci", "virtio_blk", "9pnet_virtio", "9p",
    "crc32c_generic", "ext4", "nbd", "dm-mod", "loop",
]

# Debian packages the build or the guests need. busybox-static, not busybox: the
# initramfs has no C library, so /bin/busybox must be the static one.
APT_PACKAGES = ["busybox-static", "kmod", "qemu-system-x86"]
BUSYBOX = "/bin/busybox"


class BuildError(Exception):
    pass


def log(message: str) -> None:
    print(f"vm/build: {message}", file=sys.stderr, flush=True)


def run(argv, **kwargs) -> str:
    """Run ARGV, return its stdout; raise BuildError with its stderr on failure."""
    try:
        done = subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} is not installed") from None
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{' '.join(map(str, argv))} failed: {e.stderr.strip()}") from None
    return done.stdout


def fingerprint() -> str:
    """Hash of everything the kit is made from, apart from the kernel package itself."""
    h = hashlib.sha256()
    for path in (Path(__file__).resolve(), HERE / "init"):
        h.update(path.read_bytes())
    h.update("\0".join(MODULES).encode())
    return h.hexdigest()[:16]


def installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.endswith(" installed")


def ensure_tools() -> None:
    missing = [pkg for pkg in APT_PACKAGES if not installed(pkg)]
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env)
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)


def kernel_package() -> str:
    """The versioned image package that the linux-image-amd64 metapackage depends on."""
    for attempt in range(2):
        try:
            out = run(["apt-cache", "depends", "linux-image-amd64"])
        except BuildError:
            out = ""
        for line in out.splitlines():
            word = line.split(":", 1)[-1].strip()
            if line.strip().startswith("Depends:") and word.startswith("linux-image-"):
                return word
        if attempt == 0:
            log("apt lists do not name a kernel yet: apt-get update")
            run(["apt-get", "update", "-q"])
    raise BuildError("apt-cache depends linux-image-amd64 names no linux-image-* package")


def unpack_kernel(package: str, work: Path) -> tuple[Path, str]:
    """Download PACKAGE into WORK, unpack it, index its modules; return (root, version)."""
    run(["apt-get", "download", package], cwd=work)
    debs = sorted(work.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise BuildError(f"expected one {package} .deb after download, got {len(debs)}")
    root = work / "root"
    run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    versions = [p.name for p in (root / "lib" / "modules").iterdir()]
    if len(versions) != 1:
        raise BuildError(f"expected one module tree in {package}, got {versions}")
    version = versions[0]
    run(["depmod", "-b", str(root), version])
    return root, version


def module_order(root: Path, version: str) -> list[Path]:
    """The .ko files to insmod, dependencies first, each once, per modprobe --show-depends."""
    out = run(["modprobe", "-d", str(root), "-S", version, "--show-depends", "-a", *MODULES])
    order: list[Path] = []
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["insmod"]:
            path = Path(words[1])
            if path not in order:
                order.append(path)
        elif words[:1] != ["builtin"]:
            raise BuildError(f"unexpected modprobe output: {line!r}")
    return order


class Cpio:
    """A newc ("070701") cpio archive written in memory, with fixed owners and times.

    Entry layout: a 110-byte ASCII header (magic + 13 eight-digit hex fields), the name with
    its NUL, padding to 4 bytes, the data, padding to 4 bytes; a TRAILER!!! entry ends it.
    Writing it here lets the archive hold /dev/console without mknod and keeps it reproducible.
    """

    def __init__(self):
        self.data = bytearray()
        self.inode = 0

    def _entry(self, name: str, mode: int, body: bytes = b"", rdev: tuple = (0, 0)) -> None:
        self.inode += 1
        raw = name.encode() + b"\0"
        fields = [self.inode, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(raw), 0]
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, body)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def make_initramfs(modules: list[Path]) -> bytes:
    archive = Cpio()
    for d in ("bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys", "tmp"):
        archive.directory(d)
    # The kernel opens /dev/console before /init runs; without it init has no output.
    archive.chardev("dev/console", 5, 1)
    archive.file("init", (HERE / "init").read_bytes(), 0o755)
    archive.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    for ko in modules:
        archive.file(f"lib/modules/{ko.name}", ko.read_bytes())
    names = "".join(f"{ko.name}\n" for ko in modules)
    archive.file("lib/modules/load-order", names.encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def kit_is_current(kit: Path) -> bool:
    try:
        meta = json.loads((kit / "kit.json").read_text())
    except (OSError, ValueError):
        return False
    files_ok = all((kit / name).is_file() for name in ("vmlinuz", "initrd.img"))
    return files_ok and meta.get("fingerprint") == fingerprint()


def build(kit: Path, force: bool) -> None:
    if not force and kit_is_current(kit):
        log(f"kit in {kit} is current")
        return
    ensure_tools()
    package = kernel_package()
    kit.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kit, prefix="build-") as tmp:
        work = Path(tmp)
        log(f"kernel: {package}")
        root, version = unpack_kernel(package, work)
        modules = module_order(root, version)
        log(f"{len(modules)} modules: {' '.join(m.stem for m in modules)}")
        initrd = make_initramfs(modules)
        # Write next to the final names, then rename: a kit is whole or absent.
        (work / "vmlinuz").write_bytes((root / "boot" / f"vmlinuz-{version}").read_bytes())
        (work / "initrd.img").write_bytes(initrd)
        meta = {
            "kernel_package": package,
            "kernel_version": version,
            "modules": [m.stem for m in modules],
            "fingerprint": fingerprint(),
            "initrd_sha256": hashlib.sha256(initrd).hexdigest(),
        }
        (kit / "kit.json").unlink(missing_ok=True)
        for name in ("vmlinuz", "initrd.img"):
            os.replace(work / name, kit / name)
        (kit / "kit.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"kit ready in {kit} ({len(initrd) // 1024} KiB initramfs)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kit", type=Path,
                        default=Path(os.environ.get("TZERO_VM_KIT", DEFAULT_KIT)))
    parser.add_argument("--force", action="store_true", help="rebuild even if current")
    args = parser.parse_args(argv)
    try:
        build(args.kit.resolve(), args.force)
    except BuildError as e:
        print(f"vm/build: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
