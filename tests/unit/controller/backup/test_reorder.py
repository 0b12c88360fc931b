import os

from controller.backup.reorder import ReorderBuffer


def test_reorder_buffer_holds_memory_then_spills_and_returns_everything(tmp_path):
    b = ReorderBuffer(100, str(tmp_path))
    b.put(("d", 1), b"a" * 60)
    b.put(("d", 2), b"b" * 60)  # over the bound: spilled
    b.put(("d", 3), None)
    assert b.memory_bytes == 60 and b.spilled_bytes == 60 and len(b) == 3
    assert os.listdir(tmp_path) == []
    assert b.take(("d", 2)) == b"b" * 60
    assert b.take(("d", 3)) is None
    assert b.take(("d", 1)) == b"a" * 60
    assert len(b) == 0 and b.memory_bytes == 0 and b.peak_memory_bytes == 60
    b.close()
