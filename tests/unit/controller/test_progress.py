"""Why a copy is slow: the share of the time since the display last asked that went to a wait."""


import pytest

from controller import progress
from controller.progress import WaitClock, reasons


class Clock:
    def __init__(self):
        self.now = 50.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress, "time", c)
    return c


def test_wait_clock_names_a_wait_that_took_most_of_the_time(clock):
    w = WaitClock("waiting on the output writes")
    clock.now += 10
    w.seconds += 8
    assert w.reason() == "waiting on the output writes (80% of the time)"


def test_wait_clock_counts_only_the_time_since_it_was_last_asked(clock):
    w = WaitClock("waiting on the target writes")
    clock.now += 10
    w.seconds += 9
    w.share()
    clock.now += 10
    w.seconds += 1
    assert w.reason() is None and w.share() == 0.0


def test_reasons_joins_those_that_hold_and_asks_every_source():
    asked = []

    def source(said):
        def ask():
            asked.append(said)
            return said
        return ask

    assert reasons(source("spilling"), source(None), source("waiting"))() == "spilling; waiting"
    assert asked == ["spilling", None, "waiting"], "each source's window moves on every draw"
    assert reasons(source(None))() is None
