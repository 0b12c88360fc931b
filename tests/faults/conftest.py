"""The fault suite: every case keeps a ledger (faultkit.Case); the suite's totals are printed
at the end of the run and written to .cache/faults/report.json (or $TZERO_FAULT_REPORT)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from faultkit import SUITE, Case  # noqa: E402


@pytest.fixture
def case(request, tmp_path):
    c = Case(tmp_path, request.node.nodeid)
    try:
        yield c
    finally:
        c.close()
        if c.finished or c.defects():  # a case that failed on a defect still shows in the totals
            SUITE.add(c.tally)


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not SUITE.cases:
        return
    terminalreporter.write_line(SUITE.line())
    path = os.environ.get("TZERO_FAULT_REPORT") or os.path.join(str(config.rootpath), ".cache", "faults",
                                                                 "report.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(SUITE.__dict__, f, indent=1)
