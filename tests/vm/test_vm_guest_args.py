"""vm/guest.py without booting: the QEMU command line it builds and what it refuses.

These run in `make check` (no vm marker): they need neither QEMU nor a kit.
"""

import json
from pathlib import Path

import pytest

from vm.guest import REPO, Disk, Guest, KitMissing


@pytest.fixture
def fake_kit(tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (kit / name).write_bytes(b"")
    (kit / "kit.json").write_text(json.dumps({"kernel_version": "0"}))
    return kit


def option_values(argv, option):
    return [argv[i + 1] for i, word in enumerate(argv) if word == option]


def test_guest_without_kit_says_make_vm(tmp_path):
    with pytest.raises(KitMissing, match="make vm"):
        Guest("true", job_dir=tmp_path / "job", kit=tmp_path / "nokit")


def test_guest_command_shares_host_root_and_repo_read_only_and_job_dir_writable(tmp_path, fake_kit):
    argv = Guest("true", job_dir=tmp_path / "job", kit=fake_kit).command()
    hostroot, job, repo = option_values(argv, "-virtfs")
    assert "path=/," in hostroot and "readonly=on" in hostroot
    assert f"path={tmp_path / 'job'}," in job and "readonly" not in job
    assert f"path={REPO}," in repo and "mount_tag=repo" in repo and "readonly=on" in repo
    (append,) = option_values(argv, "-append")
    assert f"tz_repo={REPO}" in append.split(), "the guest mounts the repo at its own path"
    assert {"-no-reboot", "-nographic"} <= set(argv)
    assert option_values(argv, "-accel") == ["tcg,thread=multi"]


def test_guest_env_words_reach_the_kernel_command_line(tmp_path, fake_kit):
    argv = Guest("true", job_dir=tmp_path / "job", kit=fake_kit, env={"rounds": "3"}).command()
    (append,) = option_values(argv, "-append")
    assert "rounds=3" in append.split() and "tz_script=/run/job/script" in append.split()


def test_guest_env_value_with_space_is_refused(tmp_path, fake_kit):
    with pytest.raises(ValueError, match="one kernel command-line word"):
        Guest("true", job_dir=tmp_path / "job", kit=fake_kit, env={"a": "b c"}).command()


def test_guest_script_text_gets_a_shell_line_and_path_is_copied(tmp_path, fake_kit):
    Guest("echo hi", job_dir=tmp_path / "a", kit=fake_kit)
    assert (tmp_path / "a" / "script").read_text() == "#!/bin/sh\necho hi"
    source = tmp_path / "s.py"
    source.write_text("#!/usr/bin/python3\nprint(1)\n")
    Guest(Path(source), job_dir=tmp_path / "b", kit=fake_kit)
    assert (tmp_path / "b" / "script").read_text() == source.read_text()


def test_disk_nbd_and_raw_become_blockdevs_named_by_serial(tmp_path):
    nbd = Disk("vol1", nbd_socket="/s,ock", nbd_export="e").qemu_args("d0")
    assert nbd == ["-blockdev", "driver=nbd,node-name=d0,server.type=unix,"
                   "server.path=/s,,ock,export=e",
                   "-device", "virtio-blk-pci,drive=d0,serial=vol1"]
    raw = Disk("r", path=tmp_path / "r.img", read_only=True).qemu_args("d1")
    assert raw[1] == (f"driver=raw,node-name=d1,read-only=on,file.driver=file,"
                      f"file.filename={tmp_path / 'r.img'}")


@pytest.mark.parametrize("kwargs", [
    {"serial": "x" * 21, "path": "/i"},
    {"serial": "a b", "path": "/i"},
    {"serial": "ok"},
    {"serial": "ok", "path": "/i", "nbd_socket": "/s"},
])
def test_disk_refuses_bad_serial_or_not_exactly_one_backend(kwargs):
    with pytest.raises(ValueError):
        Disk(**kwargs)
