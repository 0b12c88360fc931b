"""--rate's pacing policy against a fake clock: the grammar, the token bucket (a burst of one
slice, then the rate, debt for a read larger than what is left), auto's yielding to busy
writers and its floor, and the copy loop's wait."""

import pytest

from controller.backup.rate import (
    AUTO_BUSY_WRITES_PER_S,
    AUTO_FLOOR,
    AUTO_WINDOW_S,
    MIN_BURST,
    POLL_S,
    SLICE_S,
    Pacer,
    Rate,
    TokenBucket,
    WriteWatch,
    parse_rate,
)

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        assert s > 0, "a paced loop never sleeps for nothing"
        self.now += s


def drain(admit, clock: Clock, seconds: float, request: int = MiB) -> int:
    """Bytes admitted in SECONDS of a loop that asks for REQUEST bytes until refused, then again
    a millisecond later (at most 4 requests a millisecond)."""
    end, total = clock.now + seconds, 0
    while clock.now < end:
        for _ in range(4):
            if not admit(request):
                break
            total += request
        clock.now += 0.001
    return total


@pytest.mark.parametrize("text, rate", [
    ("max", Rate("max")), ("AUTO", Rate("auto")), ("200M", Rate("fixed", 200 * MiB)),
    ("200MiB", Rate("fixed", 200 * MiB)), ("1.5G", Rate("fixed", 1536 * MiB)), ("64m/s", Rate("fixed", 64 * MiB)),
    ("1M", Rate("fixed", MiB)),
])
def test_parse_rate_takes_max_auto_and_sizes_per_second(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text, said", [("fast", "not a rate"), ("", "not a rate"), ("-5M", "not a rate"),
                                        ("512K", "below the least rate"), ("0", "below the least rate")])
def test_parse_rate_refuses_what_is_not_a_rate_with_a_message(text, said):
    with pytest.raises(ValueError, match=said):
        parse_rate(text)


def test_rate_says_itself_as_users_read_it():
    assert str(parse_rate("200M")) == "200 MiB/s" and str(parse_rate("auto")) == "auto"


def test_bucket_starts_with_one_slice_then_holds_the_rate():
    clock = Clock()
    bucket = TokenBucket(100 * MiB, clock)
    burst = sum(MiB for _ in range(100) if bucket.take(MiB))
    assert burst == 10 * MiB, "a full bucket: a tenth of a second's worth at once"
    steady = drain(bucket.take, clock, 10.0)
    assert 995 * MiB <= steady <= 1001 * MiB, steady


def test_bucket_never_exceeds_rate_times_time_plus_one_slice_and_one_request():
    clock = Clock()
    rate = 16 * MiB
    bucket = TokenBucket(rate, clock)
    for seconds in (0.3, 1.0, 4.0):
        total = drain(bucket.take, clock, seconds)
        assert total <= rate * seconds + rate * SLICE_S + MiB
        clock.now += 5  # idle: the bucket refills, to one slice only
    assert bucket.delay() == 0 and bucket.tokens == int(max(rate * SLICE_S, MIN_BURST))


def test_bucket_lets_a_read_larger_than_its_tokens_go_into_debt_and_waits_it_off():
    clock = Clock()
    bucket = TokenBucket(MiB, clock)  # holds one request (the burst's floor)
    assert bucket.take(4 * MiB)
    assert not bucket.take(1)
    assert bucket.delay() == pytest.approx(3.0, abs=0.01), "3 MiB of debt at 1 MiB/s"
    clock.now += 3.01
    assert bucket.take(MiB)


def test_unlimited_bucket_always_admits_and_never_delays():
    clock = Clock()
    bucket = TokenBucket(None, clock)
    assert all(bucket.take(1 << 30) for _ in range(100)) and bucket.delay() == 0


def test_bucket_switched_from_unlimited_starts_full():
    clock = Clock()
    bucket = TokenBucket(None, clock)
    bucket.set_rate(AUTO_FLOOR)
    assert bucket.delay() == 0 and bucket.take(MiB), "a read judged ready before the switch still goes"


class Counter:
    """A subsystem's write count as the controller sees it: (when, count)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.writes = 0
        self.writes_at = lambda: self.writes
        self.known = True

    def __call__(self):
        return (self.clock(), self.writes_at()) if self.known else None


def test_watch_is_busy_while_writes_come_at_the_threshold_and_quiet_after_the_window():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter], clock)
    for _ in range(50):  # 0.5 s at twice the threshold
        clock.now += 0.01
        counter.writes += AUTO_BUSY_WRITES_PER_S * 2 // 100
        watch.busy()
    assert watch.busy()
    clock.now += AUTO_WINDOW_S + 0.02  # no writes for a whole window
    assert not watch.busy()


def test_watch_is_quiet_under_a_trickle_of_writes():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter], clock)
    for i in range(200):  # 2 s at a quarter of the threshold
        clock.now += 0.01
        if i % 4 == 0:
            counter.writes += AUTO_BUSY_WRITES_PER_S // 100
        assert not watch.busy()


def test_watch_reads_pulses_that_come_seldom_and_ignores_unknown_counts():
    clock = Clock()
    pulse = {"at": clock.now, "writes": 0}
    silent = Counter(clock)
    silent.known = False  # a subsystem that does not say
    watch = WriteWatch([lambda: (pulse["at"], pulse["writes"]), silent], clock)
    for _ in range(4):  # a pulse every 0.25 s, 1000 writes a second between them
        clock.now += 0.25
        pulse["at"], pulse["writes"] = clock.now, pulse["writes"] + 250
        watch.busy()
    assert watch.busy()


def test_watch_samples_at_most_every_few_milliseconds():
    clock = Clock()
    looks = []
    watch = WriteWatch([lambda: looks.append(1) or (clock.now, 0)], clock)
    for _ in range(100):
        watch.busy()
    assert len(looks) == 1


def test_pacer_at_max_admits_everything_and_never_waits():
    clock = Clock()
    pacer = Pacer(Rate("max"), clock=clock, sleep=clock.sleep)
    assert all(pacer.admit(1 << 30) for _ in range(10)) and pacer.ready() and pacer.waited_s == 0


def test_pacer_ready_sleeps_at_most_a_poll_and_counts_the_wait():
    clock = Clock()
    pacer = Pacer(Rate("fixed", MiB), clock=clock, sleep=clock.sleep)
    assert pacer.admit(2 * MiB)  # one second of debt beyond the full bucket
    waits = 0
    while not pacer.ready():
        waits += 1
    assert waits >= 1.0 / POLL_S, "the copy loop wakes every poll while it waits"
    assert pacer.waited_s == pytest.approx(1.0, abs=POLL_S)


def test_pacer_auto_reads_at_full_speed_while_quiet_and_at_the_floor_while_busy():
    clock = Clock()
    counter = Counter(clock)
    pacer = Pacer(Rate("auto"), WriteWatch([counter], clock), clock=clock, sleep=clock.sleep)
    assert drain(pacer.admit, clock, 1.0) >= 4000 * MiB, "quiet: every request goes"
    assert pacer.yielded == 0

    started = clock.now
    counter.writes_at = lambda: int((clock.now - started) * 1000)  # 1000 writes a second from now on
    drain(pacer.admit, clock, 0.2)  # auto notices within a fraction of its window
    assert pacer.yielded == 1 and pacer.bucket.rate == AUTO_FLOOR
    took = drain(pacer.admit, clock, 4.0)
    assert took <= AUTO_FLOOR * 4.0 + AUTO_FLOOR * SLICE_S + MiB, "busy: the floor"
    assert took >= AUTO_FLOOR * 4.0 * 0.9, "the floor: the backup still goes on"
    assert pacer.yielded == 1
    counter.writes_at = lambda: counter.writes  # the writers stop
    clock.now += AUTO_WINDOW_S + 0.1
    assert drain(pacer.admit, clock, 0.1) >= 400 * MiB, "the writers stopped: full speed again"


def test_auto_without_write_counts_is_refused():
    with pytest.raises(AssertionError):
        Pacer(Rate("auto"))
