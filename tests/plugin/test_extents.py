"""Block status on a fragmented image: the live plugin and serve-backup answer REQ_ONE with one
extent and a long request with a bounded number, so qemu-img map and compare walk them like
nbdkit's own file plugin, and agree with it on every extent."""

import io
import os
import shutil
import subprocess

import nbd
import pytest

from backupformat import Dataset, Header, StreamWriter
from common import blockdev

from helpers import BackupServer, Subsystem, accepts_unix, wait_for

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) is needed")

SIZE = 64 << 20
RUN = 4096  # data and holes alternate every 4 KiB: 16384 extents
EXTENTS_PER_REPLY = 1024  # the plugins' cap (nbdplugin/plugin.py, nbdplugin/backup_plugin.py)


def fragmented_image(path):
    """SIZE bytes: a hole, then 4 KiB of data (each block stamped with its offset), over and over."""
    with open(path, "wb") as f:
        f.write(b"".join(offset.to_bytes(8, "little") * (RUN // 8) for offset in range(0, SIZE, RUN)))
    fd = os.open(path, os.O_RDWR)
    try:
        for offset in range(0, SIZE, 2 * RUN):
            blockdev.punch_hole(fd, offset, RUN)
    finally:
        os.close(fd)
    return path


def backup_of(image, path):
    """A backup whose one dataset 'frag' holds IMAGE's data runs as records and its holes as gaps."""
    data = image.read_bytes()
    out = io.BytesIO()
    w = StreamWriter(out, Header(tool_version="0.1.0", time_zero="2026-11-25T10:00:00+00:00", chunk_size=65536,
                                 datasets=[Dataset("frag", SIZE)]))
    for offset in range(RUN, SIZE, 2 * RUN):
        w.write(0, offset, data[offset:offset + RUN])
    w.finish()
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{kind: (NBD URI, unix socket, export)}: nbdkit's file plugin (the reference), tzero serve,
    tzero serve-backup, all on the same fragmented content; and the image file."""
    tmp = tmp_path_factory.mktemp("extents")
    image = fragmented_image(tmp / "frag.img")
    if os.stat(image).st_blocks * 512 > SIZE * 3 // 4:
        pytest.skip("this file system does not keep 4 KiB holes")
    live = fragmented_image(tmp / "live.img")  # tzero serve may write to its own copy
    ref_sock = str(tmp / "file.sock")
    ref = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", "-r", "-U", ref_sock, "file", str(image)])
    sub = Subsystem(tmp, "s1", {"frag": live})
    served = BackupServer(tmp, backup_of(image, tmp / "frag.tzb"))
    try:
        wait_for(lambda: accepts_unix(ref_sock), 30, "nbdkit's file plugin to serve")
        yield {"file": (f"nbd+unix:///?socket={ref_sock}", ref_sock, ""),
               "live": (sub.uri("frag"), sub.socket, "frag"),
               "backup": (served.uri("frag"), served.socket, "frag")}, image
    finally:
        served.stop()
        sub.stop()
        ref.terminate()
        ref.wait(10)


def block_status(sock, export, offset, length, flags=0):
    """The extents of one block-status reply: [(length, flags), ...]."""
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_export_name(export)
    h.connect_unix(sock)
    try:
        got = []
        h.block_status(length, offset, lambda ctx, off, entries, err: got.append(entries), flags)
        assert len(got) == 1, "one context, one reply"
        return list(zip(got[0][::2], got[0][1::2], strict=True))
    finally:
        h.shutdown()


@pytest.mark.parametrize("kind", ["live", "backup"])
def test_extents_req_one_reply_holds_one_extent(servers, kind):
    (_, sock, export) = servers[0][kind]
    assert block_status(sock, export, 0, SIZE, nbd.CMD_FLAG_REQ_ONE) == [(RUN, 3)]
    assert block_status(sock, export, RUN + 10, SIZE - RUN - 10, nbd.CMD_FLAG_REQ_ONE) == [(RUN - 10, 0)]


@pytest.mark.parametrize("kind", ["live", "backup"])
def test_extents_long_request_reply_is_capped_and_matches_the_reference(servers, kind):
    (_, sock, export) = servers[0][kind]
    (_, ref_sock, _) = servers[0]["file"]
    got = block_status(sock, export, 0, SIZE)
    reference = block_status(ref_sock, "", 0, SIZE)
    assert len(reference) == SIZE // RUN, "the file plugin answers with every extent at once"
    assert len(got) == EXTENTS_PER_REPLY and got == reference[:EXTENTS_PER_REPLY]


@pytest.mark.parametrize("kind", ["live", "backup"])
def test_extents_qemu_img_map_equals_the_file_plugin(servers, kind):
    uris, _ = servers

    def qemu_map(uri):
        return subprocess.run(["qemu-img", "map", "--output=json", uri], capture_output=True, text=True,
                              check=True, timeout=300).stdout

    reference = qemu_map(uris["file"][0])
    assert reference.count("\n") >= SIZE // RUN, "the reference map lists every extent"
    assert qemu_map(uris[kind][0]) == reference


@pytest.mark.parametrize("kind", ["live", "backup"])
def test_extents_qemu_img_compare_finds_the_export_identical_to_the_image(servers, kind):
    uris, image = servers
    proc = subprocess.run(["qemu-img", "compare", uris[kind][0], str(image)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
