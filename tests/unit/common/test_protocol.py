import pytest

from common.protocol import ProtocolError, encode, parse_request, ranges_of


@pytest.mark.parametrize("line, fragment", [
    (b"not json", "not JSON"),
    (b"[1,2]", "JSON object"),
    (b'{"op":"launch"}', "unknown op"),
    (b'{"op":"hello"}', "missing field 'version'"),
    (b'{"op":"hello","version":"1"}', "must be int"),
    (b'{"op":"hello","version":true}', "must be int"),
    (b'{"op":"thaw","now":1}', "unexpected field"),
    (b'\xff\xfe', "not JSON"),
])
def test_protocol_malformed_request_is_refused_with_bad_message(line, fragment):
    with pytest.raises(ProtocolError) as e:
        parse_request(line)
    assert e.value.code == "bad-message" and fragment in e.value.message


def test_protocol_request_round_trips_through_encode():
    msg = {"op": "release", "export": "a", "ranges": [[0, 3]]}
    assert parse_request(encode(msg)) == msg


def test_protocol_ranges_of_coalesces_runs():
    assert ranges_of([1, 2, 3, 7, 9, 10]) == [[1, 3], [7, 1], [9, 2]]
    assert ranges_of([]) == []
