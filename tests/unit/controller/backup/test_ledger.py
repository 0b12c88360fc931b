"""The ledger: a concordance chunk is owed nothing only once every claim on its bytes is settled."""

import pytest

from controller.backup.ledger import Ledger

GRID = 4096


def test_ledger_chunk_of_one_claim_is_done_when_its_bytes_are_settled():
    led = Ledger(GRID, {"x": [(0, 3 * GRID)]})
    assert led.settle("x", 0, GRID) == [0]
    assert led.settle("x", GRID, 2 * GRID) == [1, 2]
    assert led.owed("x", 0) == 0


def test_ledger_chunk_shared_by_two_claims_waits_for_both():
    # two datasets meet inside chunk 1: it may be released only after both took their bytes
    led = Ledger(GRID, {"x": [(0, GRID + 100), (GRID + 100, GRID - 100)]})
    assert led.settle("x", 0, GRID + 100) == [0], "chunk 1 still owes the second dataset's bytes"
    assert led.owed("x", 1) == GRID - 100
    assert led.settle("x", GRID + 100, GRID - 100) == [1]


def test_ledger_partial_chunk_claims_count_only_their_bytes():
    led = Ledger(GRID, {"x": [(GRID + 512, 1024)]})
    assert led.owed("x", 1) == 1024 and led.owed("x", 0) == 0 and led.owed("x", 2) == 0
    assert led.settle("x", GRID + 512, 512) == []
    assert led.settle("x", GRID + 1024, 512) == [1]


def test_ledger_the_same_bytes_claimed_twice_are_settled_twice():
    # a partition table read for the re-check and by its dataset: two claims, two settlements
    led = Ledger(GRID, {"x": [(0, 512), (0, GRID)]})
    assert led.settle("x", 0, GRID) == []
    assert led.settle("x", 0, 512) == [0]


def test_ledger_settling_more_than_was_claimed_is_a_programming_error():
    led = Ledger(GRID, {"x": [(0, GRID)]})
    led.settle("x", 0, GRID)
    with pytest.raises(AssertionError, match="settled once per claim"):
        led.settle("x", 0, 1)


def test_ledger_exports_without_claims_are_not_in_it():
    led = Ledger(GRID, {"x": [(0, GRID)], "y": []})
    assert led.exports == {"x"}
    assert led.owed("y", 0) == 0
