"""Which marked uploads are stale: the owner's process gone, or its marker not renewed."""

import json
import os
import subprocess

from controller.backup import s3uploads
from controller.backup.s3uploads import STALE_AFTER_S, Owner, is_stale, marker_body, marker_key, this_process


def marker(owner: Owner) -> dict:
    return json.loads(marker_body("k", "u1", owner))


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_s3uploads_marker_of_this_live_process_is_not_stale():
    assert not is_stale(marker(this_process()), 0, this_process())


def test_s3uploads_marker_of_a_process_gone_from_this_host_is_stale():
    here = this_process()
    assert is_stale(marker(here._replace(pid=dead_pid())), 0, here)


def test_s3uploads_marker_of_a_reused_pid_is_stale():
    here = this_process()
    assert is_stale(marker(here._replace(started=here.started + 1)), 0, here), "same pid, another process"


def test_s3uploads_marker_from_before_this_hosts_boot_is_stale():
    here = this_process()
    assert is_stale(marker(here._replace(boot_id="another-boot")), 0, here)


def test_s3uploads_fresh_marker_of_another_host_is_not_stale_until_unrenewed_for_long():
    here = this_process()
    other = here._replace(host=here.host + "-other", pid=1)
    assert not is_stale(marker(other), STALE_AFTER_S - 1, here)
    assert is_stale(marker(other), STALE_AFTER_S + 1, here)


def test_s3uploads_marker_keys_live_under_one_prefix_and_differ_per_upload():
    a, b = marker_key("k", "u1"), marker_key("k", "u2")
    assert a.startswith(s3uploads.MARKER_PREFIX) and b.startswith(s3uploads.MARKER_PREFIX) and a != b
    assert marker_key("k", "u1") == a


def test_s3uploads_this_process_names_this_pid_and_its_start():
    me = this_process()
    assert me.pid == os.getpid() and me.started > 0 and me.boot_id
