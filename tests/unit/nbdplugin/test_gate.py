import threading
import time

import pytest

from nbdplugin.gate import FreezeTimeout, WriteGate


def test_gate_freeze_waits_for_inflight_writes_then_holds_new_ones():
    gate = WriteGate()
    gate.enter()
    frozen = threading.Event()
    t = threading.Thread(target=lambda: (gate.freeze(5), frozen.set()))
    t.start()
    assert not frozen.wait(0.1), "freeze must wait for the write in flight"
    gate.leave()
    assert frozen.wait(5)
    t.join()
    admitted = threading.Event()
    w = threading.Thread(target=lambda: (gate.enter(), admitted.set()))
    w.start()
    assert not admitted.wait(0.1), "a write arriving while frozen waits"
    closed_for = gate.thaw()
    assert admitted.wait(5) and closed_for > 0
    w.join()
    gate.leave()


def test_gate_freeze_times_out_when_writes_do_not_drain_and_reopens():
    gate = WriteGate()
    gate.enter()
    with pytest.raises(FreezeTimeout):
        gate.freeze(0.05)
    assert not gate.frozen
    gate.leave()


def test_gate_writer_waits_at_most_the_deadline_and_reports_expiry():
    expired = []
    gate = WriteGate(on_expire=lambda: expired.append(True))
    gate.freeze(0.1)
    start = time.monotonic()
    gate.enter()
    waited = time.monotonic() - start
    gate.leave()
    assert waited < 5 and expired == [True] and not gate.frozen


def test_gate_watchdog_expires_an_overdue_freeze():
    expired = []
    gate = WriteGate(on_expire=lambda: expired.append(True))
    gate.freeze(0.01)
    gate.expire_if_due()  # may be too early on a fast machine
    time.sleep(0.02)
    gate.expire_if_due()
    assert expired == [True] and not gate.frozen
    assert gate.thaw() == 0.0
