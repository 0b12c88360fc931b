"""Host disks in a guest: an nbdkit export through QEMU's own NBD client, and a raw file.

The host puts a known sector into each image before boot; the guest finds each disk by
its serial, reads that sector, writes its own pattern at 1 MiB, and syncs. After the run
the host reads the guest's patterns straight out of the image files.
"""

import pytest

from vm.guest import Disk

from vmhelpers import check, guest

pytestmark = pytest.mark.vm

MiB = 1 << 20
HOST_TEXT = b"the host wrote this before boot"


def guest_text(serial: str) -> bytes:
    return f"the guest wrote this to {serial}".encode()


SCRIPT = """
for serial in nbddisk rawdisk; do
    dev=/dev/disk/by-id/virtio-$serial
    [ -b "$dev" ] || { echo "no disk $serial"; exit 10; }
    echo "@@tzero SEEN_$serial $(head -c 31 "$dev")"
    printf 'the guest wrote this to %s' "$serial" |
        dd of="$dev" bs=1M seek=1 conv=notrunc oflag=direct,sync 2>/dev/null || exit 11
done
sync
"""


def make_image(path):
    with open(path, "wb") as f:
        f.write(HOST_TEXT)
        f.truncate(16 * MiB)


@pytest.fixture(scope="module")
def run(module_job, host_nbdkit, tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    nbd_image, raw_image = images / "nbd.img", images / "raw.img"
    make_image(nbd_image)
    make_image(raw_image)
    server = host_nbdkit("file", str(nbd_image))
    disks = [Disk("nbddisk", nbd_socket=server.sock, nbd_export="nbddisk"),
             Disk("rawdisk", path=raw_image)]
    verdict = guest(SCRIPT, module_job, disks=disks).wait()
    server.check_alive()
    check(verdict)
    server.stop()              # nbdkit has flushed everything by the time it exits
    return verdict, {"nbddisk": nbd_image, "rawdisk": raw_image}


def read_at(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.mark.parametrize("serial", ["nbddisk", "rawdisk"])
def test_guest_reads_what_the_host_put_on_the_disk(run, serial):
    verdict, _ = run
    assert verdict.value(f"SEEN_{serial}") == HOST_TEXT.decode()


@pytest.mark.parametrize("serial", ["nbddisk", "rawdisk"])
def test_guest_writes_reach_the_host_image(run, serial):
    _, images = run
    expected = guest_text(serial)
    assert read_at(images[serial], MiB, len(expected)) == expected
