"""--rate's pacing policy against a fake clock: the grammar, the token bucket (a burst of one
slice, then the rate, debt for a read larger than what is left), auto's yielding to busy
writers that save no chunks and its floor, and the copy loop's wait."""

import pytest

from controller.backup.rate import (
    AUTO_BUSY_WRITES_PER_S,
    AUTO_FLOOR,
    AUTO_WINDOW_S,
    AUTO_WRITES_PER_SAVE,
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
    """A subsystem's write count as the controller sees it (when, count), and its pulses: (when,
    writes, chunks saved), renewed when pulse() is called."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.writes = 0
        self.writes_at = lambda: self.writes
        self.saves = 0
        self.known = True
        self.last_pulse = None

    def __call__(self):
        return (self.clock(), self.writes_at()) if self.known else None

    def pulse(self) -> None:
        self.last_pulse = (self.clock(), self.writes_at(), self.saves) if self.known else None

    def source(self):
        return self, lambda: self.last_pulse


def run(watch: WriteWatch, counter: Counter, clock: Clock, seconds: float, writes_per_s: int,
        saves_per_s: int = 0) -> bool:
    """SECONDS of writes at a steady rate, a pulse every 0.25 s; the watch's last verdict."""
    for i in range(int(seconds * 100)):
        clock.now += 0.01
        counter.writes += writes_per_s // 100
        counter.saves += saves_per_s // 100
        if i % 25 == 24:
            counter.pulse()
        verdict = watch.should_yield()
    return verdict


def test_watch_yields_to_busy_writes_that_save_nothing_and_stops_after_the_window():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter.source()], clock)
    assert run(watch, counter, clock, 1.0, AUTO_BUSY_WRITES_PER_S * 2)
    clock.now += AUTO_WINDOW_S + 0.02  # no writes for a whole window
    counter.pulse()
    assert not watch.should_yield()


def test_watch_does_not_yield_to_writes_that_save_chunks():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter.source()], clock)
    writes = AUTO_BUSY_WRITES_PER_S * 10
    assert not run(watch, counter, clock, 2.0, writes, saves_per_s=2 * writes // AUTO_WRITES_PER_SAVE), \
        "copying sooner spares the writers copy-before-write"
    assert run(watch, counter, clock, 1.0, writes), "their chunks all saved: now the copy yields"


def test_watch_does_not_yield_before_a_pulse_tells_what_the_writes_cost():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter.source()], clock)
    assert not run(watch, counter, clock, 0.2, AUTO_BUSY_WRITES_PER_S * 10)
    counter.pulse()  # the first: counted from the session's open, so it tells alone
    clock.now += 0.01
    assert watch.should_yield()


def test_watch_is_quiet_under_a_trickle_of_writes():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([counter.source()], clock)
    assert not run(watch, counter, clock, 2.0, AUTO_BUSY_WRITES_PER_S // 4)


def test_watch_reads_pulses_alone_when_that_is_all_a_subsystem_gives():
    clock = Clock()
    counter = Counter(clock)
    watch = WriteWatch([(lambda: None if counter.last_pulse is None else counter.last_pulse[:2],
                         lambda: counter.last_pulse)], clock)
    assert run(watch, counter, clock, 1.5, AUTO_BUSY_WRITES_PER_S * 4)


def test_watch_never_yields_for_a_subsystem_that_does_not_count():
    clock = Clock()
    busy, silent = Counter(clock), Counter(clock)
    silent.known = False  # an older subsystem: no count, no pulse field
    watch = WriteWatch([busy.source(), silent.source()], clock)
    assert not run(watch, busy, clock, 1.5, AUTO_BUSY_WRITES_PER_S * 4)


def test_watch_samples_at_most_every_few_milliseconds():
    clock = Clock()
    looks = []
    watch = WriteWatch([(lambda: looks.append(1) or (clock.now, 0), lambda: None)], clock)
    for _ in range(100):
        watch.should_yield()
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
    fresh = (counter, lambda: (clock.now, counter.writes_at(), 0))  # pulses as often as it looks, no saves
    pacer = Pacer(Rate("auto"), WriteWatch([fresh], clock), clock=clock, sleep=clock.sleep)
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
