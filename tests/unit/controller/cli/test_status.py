import copy

import pytest

from controller.cli.status import format_status

STATUS = {
    "chunk_size": 65536, "side_memory": 256 << 20, "spill_file_bytes": 96 << 20,
    "exports": [{"name": "q", "size": 1 << 30}],
    "session": {
        "session": "ab12", "phase": "active", "exports": {"q": {"pending": 3, "saved": 1, "done": 4, "untracked": 8}},
        "side_memory_bytes": 65536, "side_spill_bytes": 0, "side_peak_bytes": 131072, "pressure": False,
        "chunks_cow": 2, "released_bytes": 1 << 20, "rate_bytes_per_s": 1 << 20,
        "copier": {"chunks_in_order": 7, "chunks_ahead": 5, "chunks_opportunistic": 2, "spilled_bytes": 4096,
                   "peak_host_buffer_bytes": 1 << 20},
    },
}


def test_status_shows_untracked_chunks_and_the_copier_policy_at_work():
    text = format_status("s.ctl", STATUS)
    assert "side memory 256 MiB, spill file 96 MiB" in text
    assert "q: 4 copied, 1 saved, 3 pending chunks, 8 untracked" in text
    assert "copier: 7 chunks in order, 5 ahead of order, 2 opportunistically; 4 KiB spilled" in text


def test_status_before_the_copier_reported_leaves_its_line_out():
    status = {**STATUS, "session": {**STATUS["session"], "copier": {}}}
    assert "copier:" not in format_status("s.ctl", status)


def test_status_with_a_partial_copier_prints_what_it_has():
    status = {**STATUS, "session": {**STATUS["session"], "copier": {"chunks_in_order": 3, "mystery": [1]}}}
    text = format_status("s.ctl", status)
    assert "copier: 3 chunks in order" in text and "mystery" not in text


@pytest.mark.parametrize("damage", [
    lambda s: s.pop("chunk_size"),
    lambda s: s.update(chunk_size="big"),
    lambda s: s.update(exports=[{"name": "q"}, 7]),
    lambda s: s.update(exports=None),
    lambda s: s["session"].pop("exports"),
    lambda s: s["session"].update(exports={"q": None, "r": {"done": "x"}}),
    lambda s: s["session"].update(copier=["not", "an", "object"]),
    lambda s: s["session"].update(side_memory_bytes=None, pressure="maybe"),
    lambda s: s.update(session="active"),
    lambda s: s.update(session=None, last_session={"phase": 3}),
    lambda s: s.update(session=None, last_session="gone"),
    lambda s: s.clear(),
])
def test_status_with_missing_or_unexpected_fields_prints_what_it_can(damage):
    status = copy.deepcopy(STATUS)
    damage(status)
    text = format_status("s.ctl", status)
    assert text.startswith("subsystem s.ctl")
