import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.protocol import (
    MAX_DEADLINE_MS,
    MAX_LEASE_MS,
    MIN_DEADLINE_MS,
    MIN_LEASE_MS,
    OPS,
    ProtocolError,
    encode,
    parse_request,
    ranges_of,
)


def refusal(line: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as e:
        parse_request(line)
    return e.value


@pytest.mark.parametrize("line, fragment", [
    (b"not json", "not JSON"),
    (b"[1,2]", "JSON object"),
    (b'{"op":"launch"}', "unknown op"),
    (b'{"op":"hello"}', "missing field 'version'"),
    (b'{"op":"hello","version":"1"}', "must be an integer"),
    (b'{"op":"hello","version":true}', "must be an integer"),
    (b'{"op":"thaw","now":1}', "unexpected field"),
    (b'\xff\xfe', "not JSON"),
])
def test_protocol_malformed_request_is_refused_with_bad_message(line, fragment):
    e = refusal(line)
    assert e.code == "bad-message" and fragment in e.message


@pytest.mark.parametrize("line", [
    b'{"op": []}',
    b'{"op": {"x": 1}}',
    b'[' * 100_000 + b']' * 100_000,
    b'{"op":"open","exports":' + b'[' * 100_000 + b']' * 100_000 + b'}',
    b'{"op":"open","exports":[[1]]}',
    b'{"op":"open","exports":["a", 1]}',
    b'{"op":"open","lease_ms":1' + b'0' * 400 + b'}',
    b'{"op":"freeze","deadline_ms":1' + b'0' * 400 + b'}',
    b'{"op":"freeze","deadline_ms":1e400}',
    b'{"op":"freeze","deadline_ms":NaN}',
    b'{"op":"open","lease_ms":-Infinity}',
    b'{"op":"open","lease_ms":1' + b'0' * 5000 + b'}',
    b'{"op":"open","track":{"a":[[0,1,2]]}}',
    b'{"op":"open","track":{"a":[[0,"1"]]}}',
    b'{"op":"open","track":{"a":[[true,1]]}}',
    b'{"op":"open","track":{"a":7}}',
    b'{"op":"release","export":"a","ranges":[[0]]}',
    b'{"op":"release","export":"a","ranges":[["0",1]]}',
    b'{"op":"release","export":"a","ranges":[[0,-1]]}',
    b'{"op":"release","export":"a","ranges":[[0,1' + b'0' * 40 + b']]}',
    b'{"op":"release","export":["a"],"ranges":[]}',
    b'{"op":"saved","export":"a","limit":0}',
    b'{"op":"saved","export":"a","limit":1' + b'0' * 30 + b'}',
    b'{"op":"heartbeat","copier":{"x":{"y":{"z":1}}}}',
    b'{"op":"heartbeat","copier":{"x":[1,2]}}',
    b'{"op":"abort","reason":"' + b'r' * 5000 + b'"}',
    b'{"op":"hello","version":-1}',
    b'{"op":"open","since":{"a":""}}',
    b'{"op":"open","since":{"a":7}}',
    b'{"op":"open","keep":{"a":[[0]]}}',
    b'{"op":"changes","export":"a","limit":1' + b'0' * 30 + b'}',
    b'{"op":"changes","export":"a","first":-1}',
])
def test_protocol_wrong_types_deep_nesting_and_huge_numbers_are_bad_messages(line):
    e = refusal(line)
    assert e.code == "bad-message"
    assert len(e.message) < 300, "a refusal quotes what it got briefly, whatever its size"


@pytest.mark.parametrize("field, op, lo, hi", [
    ("lease_ms", "open", MIN_LEASE_MS, MAX_LEASE_MS),
    ("deadline_ms", "freeze", MIN_DEADLINE_MS, MAX_DEADLINE_MS),
])
def test_protocol_lease_and_deadline_are_bounded_on_both_sides(field, op, lo, hi):
    for value in (lo, hi):
        assert parse_request(encode({"op": op, field: value}))[field] == value
    for value in (lo - 1, hi + 1, 0, -5):
        e = refusal(encode({"op": op, field: value}))
        assert e.code == "bad-message" and str(lo) in e.message and str(hi) in e.message


def test_protocol_bounds_cannot_hold_applications_for_minutes():
    assert MAX_DEADLINE_MS <= 60_000 and MAX_LEASE_MS <= 300_000


def test_protocol_well_formed_requests_of_every_op_pass():
    requests = [
        {"op": "hello", "version": 1},
        {"op": "open", "exports": ["a", "b"], "lease_ms": 30000, "track": {"a": [[0, 512]], "b": []},
         "since": {"a": "0123abcd"}, "keep": {"a": [[0, 512]]}},
        {"op": "freeze", "deadline_ms": 2000, "flush": False},
        {"op": "thaw"},
        {"op": "release", "export": "a", "ranges": [[0, 3], [7, 1]]},
        {"op": "saved", "export": "a", "limit": 10},
        {"op": "changes", "export": "a", "first": 0, "limit": 100},
        {"op": "heartbeat", "copier": {"chunks_in_order": 3, "read_path": {"a": "local"}, "rate": 1.5}},
        {"op": "status"},
        {"op": "close"},
        {"op": "abort", "reason": "done"},
    ]
    assert {r["op"] for r in requests} == set(OPS)
    for r in requests:
        assert parse_request(encode(r)) == r


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_protocol_random_bytes_are_refused_or_parsed_never_crash(line):
    try:
        msg = parse_request(line)
    except ProtocolError as e:
        assert e.code == "bad-message"
    else:
        assert msg["op"] in OPS


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(OPS)), st.dictionaries(st.text(max_size=12) | st.sampled_from(
    ["version", "exports", "lease_ms", "track", "deadline_ms", "flush", "export", "ranges", "limit", "copier",
     "reason", "since", "keep", "first"]), JSON, max_size=4))
def test_protocol_any_fields_of_any_json_type_are_refused_or_parsed_never_crash(op, fields):
    line = json.dumps({"op": op, **fields}).encode()
    try:
        msg = parse_request(line)
    except ProtocolError as e:
        assert e.code == "bad-message" and len(e.message) < 300
    else:
        assert msg["op"] == op


def test_protocol_request_round_trips_through_encode():
    msg = {"op": "release", "export": "a", "ranges": [[0, 3]]}
    assert parse_request(encode(msg)) == msg


def test_protocol_ranges_of_coalesces_runs():
    assert ranges_of([1, 2, 3, 7, 9, 10]) == [[1, 3], [7, 1], [9, 2]]
    assert ranges_of([]) == []
