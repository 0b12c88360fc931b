"""The size grammar users type, and sizes for humans."""

import pytest

from common.units import human_duration, human_rate, human_size, parse_duration, parse_size


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("64K", 65536), ("64k", 65536), ("256m", 256 << 20), ("1GiB", 1 << 30), ("2G", 2 << 30),
    ("512MiB", 512 << 20), ("1.5G", 3 << 29), ("0.5K", 512), ("2TB", 2 << 40), (" 8 M ", 8 << 20),
])
def test_units_parse_size_accepts_what_users_type(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "-1", "12Q", "lots", "1.5", "0.3K", "1..5G", "1e3",
                                  "\u0661\u0662", "\uff11K", "\u00bd", "1\u212a"])
def test_units_parse_size_refuses_non_sizes_naming_them(text):
    with pytest.raises(ValueError, match="--host-memory: "):
        parse_size(text, "--host-memory")


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (64 << 20, "64 MiB"),
    ((1 << 30) + (1 << 29), "1.5 GiB"), (1000 << 20, "1000 MiB"), (3 << 40, "3 TiB"),
])
def test_units_human_size_reads_as_people_write_it(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("text, ms", [
    ("2000", 2000), ("500ms", 500), ("2s", 2000), ("1.5s", 1500), ("1m", 60_000), ("2h", 7_200_000),
    (" 30 S ", 30_000), ("1.4", 1), ("250MS", 250),
])
def test_units_parse_duration_accepts_what_users_type_plain_numbers_are_milliseconds(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "s", "-1s", "0", "0ms", "0.0001s", "0.4", "2 days", "1e3", "5sec"])
def test_units_parse_duration_refuses_non_durations_naming_them(text):
    with pytest.raises(ValueError, match="--lease: "):
        parse_duration(text, "--lease")


@pytest.mark.parametrize("seconds, text", [
    (0.42, "0.4 s"), (9.94, "9.9 s"), (42.4, "42 s"), (185, "3 min 05 s"), (7620, "2 h 07 min"),
])
def test_units_human_duration_reads_as_people_say_it(seconds, text):
    assert human_duration(seconds) == text


def test_units_human_rate_is_a_human_size_per_second():
    assert human_rate(310.4 * (1 << 20)) == "310 MiB/s"


def test_units_parse_duration_of_hundreds_of_digits_is_exact_not_an_overflow():
    from common.units import parse_duration
    assert parse_duration("1" + "0" * 400) == 10 ** 400
    assert parse_duration("1" + "0" * 400 + "s") == 10 ** 403
