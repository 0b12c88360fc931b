"""The controller's concordance: logical-to-physical layouts, pieces, and the way back."""

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.backup.layout import Dataset, Linear, Striped, overlaps, pieces, pieces_at
from controller.backup.ledger import Ledger


def test_layout_striped_chunk_c_lives_on_leg_c_mod_n_at_c_div_n():
    s = Striped(4096, ["x", "y", "z"], [5 * 4096, 4 * 4096 + 100, 9 * 4096])
    assert s.leg_size == 4 * 4096 and s.size == 12 * 4096, "the smallest leg, cut to whole chunks"
    runs = list(s.runs())
    assert runs[0] == (0, "x", 0, 4096)
    assert runs[4] == (4 * 4096, "y", 4096, 4096)
    assert runs[11] == (11 * 4096, "z", 3 * 4096, 4096)


def test_layout_linear_concat_places_extents_back_to_back():
    lin = Linear([("x", 0, 1000), ("y", 512, 2048), ("z", 0, 0)])
    assert lin.size == 3048 and lin.extents == [("x", 0, 1000), ("y", 512, 2048)]
    assert lin.locate("y", 0, 1024) == [(1000, 512, 512)]


@settings(max_examples=200, deadline=None)
@given(stripe=st.sampled_from([512, 4096, 65536, 3 * 512]), grid=st.sampled_from([4096, 16384, 65536]),
       legs=st.integers(2, 4), chunks=st.integers(1, 12))
def test_layout_pieces_cover_each_dataset_in_order_and_are_found_again_by_chunk(stripe, grid, legs, chunks):
    names = [f"e{i}" for i in range(legs)]
    datasets = [Dataset("s", "stripe", Striped(stripe, names, [chunks * stripe + 7] * legs)),
                Dataset("r", "range", Linear([("other", 1536, 3 * grid)]))]
    every = list(pieces(datasets, grid))
    for i, ds in enumerate(datasets):
        mine = [p for p in every if p.dataset == i]
        assert [p.logical for p in mine] == sorted(p.logical for p in mine)
        assert sum(p.length for p in mine) == ds.size
        assert all(a.logical + a.length == b.logical for a, b in zip(mine, mine[1:], strict=False))
    for p in every:
        assert p.physical // grid == (p.physical + p.length - 1) // grid, "a piece stays in one chunk"
        c = p.physical // grid
        assert p in pieces_at(datasets, p.export, c * grid, grid)
    for e in names:
        assert list(pieces(datasets, grid, e)) == [p for p in every if p.export == e]


def test_layout_overlapping_datasets_are_named():
    a = Dataset("a", "", Linear([("x", 0, 8192)]))
    b = Dataset("b", "", Linear([("x", 4096, 8192)]))
    c = Dataset("c", "", Linear([("x", 8192, 512)]))
    assert overlaps([a, c]) is None
    assert overlaps([a, b]) == "datasets 'a' and 'b' overlap on export 'x' at byte 4096"


def test_ledger_chunk_is_settled_only_when_every_claim_on_it_is():
    ledger = Ledger(4096, {"x": [(0, 1024), (1024, 5120), (2048, 100)]})
    assert ledger.settle("x", 0, 1024) == []
    assert ledger.settle("x", 1024, 5120) == [1], "chunk 1 held only this claim's bytes"
    assert ledger.owed("x", 0) == 100
    assert ledger.settle("x", 2048, 100) == [0]
