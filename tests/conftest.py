import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from helpers import Subsystem  # noqa: E402


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(name, {export: path}, *options) -> a running Subsystem, stopped at teardown."""
    started = []

    def start(name, exports, *options):
        s = Subsystem(tmp_path, name, exports, *options)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
