import os
import subprocess

import pytest

from helpers import REPO


@pytest.mark.demo
def test_make_demo_backs_up_live_disks_and_proves_the_restore():
    proc = subprocess.run(["make", "-s", "demo"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the restore equals both disks at time zero" in proc.stdout
    assert "intact" in proc.stdout
