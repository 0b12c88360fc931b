"""`tzero attach` / `tzero detach` against the guest's kernel NBD driver.

One guest runs the whole story, printing a marker per step; each test checks one
behaviour from it. The guest serves /run/job/disk.img (a host file in the job share) with
nbdkit on a unix socket, attaches it, makes and fills an ext4 filesystem, detaches, then
attaches it read-only. The host then reads the filesystem out of disk.img with debugfs.
"""

import shutil
import subprocess

import pytest

from vmhelpers import SHELL_PRELUDE, check, guest, wait_for_socket_sh

pytestmark = pytest.mark.vm

DISK_MIB = 64
TEXT = "written through /dev/nbd0 in the guest"

SCRIPT = SHELL_PRELUDE + f"""
nbdkit -U /tmp/disk.sock -P /tmp/disk.pid file /run/job/disk.img
nbdkit -U /tmp/named.sock -P /tmp/named.pid --filter=exportname memory 16M \\
    exportname=disk1 exportname-strict=true
{wait_for_socket_sh("/tmp/disk.sock")}
{wait_for_socket_sh("/tmp/named.sock")}
URI="nbd+unix:///?socket=/tmp/disk.sock"
dev=$(tz attach --device /dev/nbd0 "$URI") || exit 10
echo "@@tzero DEVICE $dev $(cat /sys/block/nbd0/size) $(cat /sys/block/nbd0/ro)"
try BUSY tz attach --device /dev/nbd0 "$URI"

mkfs.ext4 -q -F /dev/nbd0 || exit 11
mkdir -p /tmp/m && mount /dev/nbd0 /tmp/m || exit 12
echo "{TEXT}" > /tmp/m/hello.txt
sync && umount /tmp/m || exit 13
try DETACH tz detach /dev/nbd0
echo "@@tzero DETACHED $(cat /sys/block/nbd0/size) $(ls /sys/block/nbd0/pid 2>/dev/null | wc -l)"
try DETACH_AGAIN tz detach /dev/nbd0

ro=$(tz attach --read-only "$URI") || exit 14
echo "@@tzero RO_DEVICE $ro $(cat /sys/block/${{ro#/dev/}}/ro)"
dd if=/dev/zero of="$ro" bs=4096 count=1 oflag=direct 2>/dev/null
echo "@@tzero RO_WRITE $?"
mount -o ro "$ro" /tmp/m || exit 15
echo "@@tzero READBACK $(cat /tmp/m/hello.txt)"
umount /tmp/m && tz detach "$ro" || exit 16

try UNKNOWN tz attach "nbd+unix:///nope?socket=/tmp/named.sock"
"""


@pytest.fixture(scope="module")
def story(module_job):
    image = module_job / "disk.img"
    with open(image, "wb") as f:
        f.truncate(DISK_MIB << 20)
    verdict = check(guest(SCRIPT, module_job).wait())
    return verdict, image


def status_and_output(verdict, name):
    status, _, output = verdict.value(name).partition(" ")
    return int(status), output


def test_attach_prints_the_device_sized_from_the_export(story):
    verdict, _ = story
    device, sectors, ro = verdict.value("DEVICE").split()
    assert (device, int(sectors), ro) == ("/dev/nbd0", DISK_MIB * 2048, "0")


def test_attach_to_a_busy_device_is_one_line_exit_1(story):
    verdict, _ = story
    status, output = status_and_output(verdict, "BUSY")
    assert status == 1 and "|" not in output
    assert output == "tzero: attaching /dev/nbd0: the device is already in use"


@pytest.mark.skipif(shutil.which("debugfs") is None, reason="debugfs not installed")
def test_filesystem_written_in_guest_lands_on_the_export(story):
    _, image = story
    out = subprocess.run(["debugfs", "-R", "cat /hello.txt", str(image)],
                         capture_output=True, text=True, check=True).stdout
    assert out == TEXT + "\n"


def test_detach_leaves_the_device_disconnected(story):
    verdict, _ = story
    assert status_and_output(verdict, "DETACH") == (0, "")
    assert verdict.value("DETACHED") == "0 0"      # size 0 sectors, no pid file


def test_detach_of_a_detached_device_says_so(story):
    verdict, _ = story
    assert status_and_output(verdict, "DETACH_AGAIN") == (1, "tzero: /dev/nbd0 is not attached")


def test_attach_without_device_picks_a_free_one(story):
    verdict, _ = story
    device, _ = verdict.value("RO_DEVICE").split()
    assert device.startswith("/dev/nbd")


def test_read_only_attach_refuses_writes_and_reads_the_data(story):
    verdict, _ = story
    assert verdict.value("RO_DEVICE").split()[1] == "1"
    assert verdict.value("RO_WRITE") != "0"
    assert verdict.value("READBACK") == TEXT


def test_attach_unknown_export_is_one_line_exit_1(story):
    verdict, _ = story
    assert status_and_output(verdict, "UNKNOWN") == (1, "tzero: export 'nope': no such export")

