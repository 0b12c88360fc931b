"""The boot kit and vm/guest.py: a guest boots, runs its one script, and reports back."""

import pytest

from vm.guest import GuestTimeout, kit_info

from vmhelpers import guest

pytestmark = pytest.mark.vm

PLUMBING = r"""
echo "@@tzero KERNEL $(uname -r)"
echo "@@tzero MODULES $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ,)"
touch /work/tzero-should-not-exist 2>/dev/null && echo "@@tzero ROOT writable"
echo "computed in the guest: $((6 * 7))" > /run/job/answer.txt
echo "@@tzero READY"
i=0; while [ ! -e /run/job/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "@@tzero GOT $(cat /run/job/go)"
exit 3
"""


@pytest.fixture(scope="module")
def plumbing(module_job):
    """One guest: reports by markers and files, waits for the host, exits 3."""
    with guest(PLUMBING, module_job) as g:
        ready = g.wait_for("READY")
        answer_when_ready = (module_job / "answer.txt").read_text()
        (module_job / "go").write_text("host says hello\n")
        verdict = g.wait()
    return verdict, ready, answer_when_ready


def test_guest_runs_the_kits_kernel_with_its_modules(plumbing):
    verdict, _, _ = plumbing
    assert verdict.value("KERNEL") == kit_info()["kernel_version"]
    loaded = set(verdict.value("MODULES").split(","))
    assert {"nbd", "ext4", "virtio_blk", "9p", "dm_mod", "loop", "crc32c_generic"} <= loaded


def test_guest_sees_host_root_read_only(plumbing):
    verdict, _, _ = plumbing
    assert verdict.values("ROOT") == []


def test_guest_files_in_job_dir_reach_host_before_next_marker(plumbing):
    _, _, answer_when_ready = plumbing
    assert answer_when_ready == "computed in the guest: 42\n"


def test_guest_markers_arrive_live_so_host_can_answer(plumbing):
    verdict, ready, _ = plumbing
    assert verdict.value("GOT") == "host says hello"
    assert ready.at <= verdict.markers[-1].at


def test_guest_exit_status_is_the_verdict(plumbing):
    verdict, _, _ = plumbing
    assert verdict.status == 3
    assert 0 < verdict.boot_seconds < verdict.wall_seconds
    print(f"boot-to-ready {verdict.boot_seconds:.1f} s, whole run {verdict.wall_seconds:.1f} s")


def test_guest_over_budget_is_killed_with_console_tail(job_dir):
    with pytest.raises(GuestTimeout, match="(?s)budget.*last .* console lines"):
        guest("sleep 600", job_dir, timeout=3).wait()
