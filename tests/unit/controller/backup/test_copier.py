"""The copier against fake views: the stream is every dataset at time zero in the specified
order, every concordance chunk is released once its bytes are taken, and chunks saved by
copy-before-write are fetched ahead under side-store pressure without changing the stream."""

import io
import random
from dataclasses import dataclass, field

from backupformat import Dataset as StreamDataset
from backupformat import Header, StreamReader, StreamWriter
from controller.backup.copier import Copier
from controller.backup.layout import Dataset, Linear, Striped, pieces
from controller.backup.plan import Plan
from controller.backup.view_reader import ViewReader

CHUNK = 64 << 10
SIZE = 16 * CHUNK


class FakeView:
    """An export's time-zero view over NBD (`tz`) and its device now (`now`): chunks in
    `saved` changed since time zero, as copy-before-write would have let them."""

    def __init__(self, seed: int, saved=()):
        rnd = random.Random(seed)
        self.tz = bytearray(rnd.randbytes(SIZE))
        for c in range(0, SIZE // CHUNK, 5):  # some all-zero chunks, as on real disks
            self.tz[c * CHUNK:(c + 1) * CHUNK] = bytes(CHUNK)
        self.now = bytearray(self.tz)
        self.saved = set(saved)
        for c in self.saved:
            self.now[c * CHUNK:(c + 1) * CHUNK] = b"\xee" * CHUNK
        self.fixed_bytes = 0
        self.slots = None  # no side store read locally: saved chunks come through the view

    # the handle: reads through the view
    def aio_pread(self, buf, offset, completion=None):
        view = buf.to_buffer()
        view[:] = self.tz[offset:offset + len(view)]
        completion(type("Err", (), {"value": 0})())  # libnbd calls back once the reply is in
        return 1

    def pread(self, n, offset):
        return bytes(self.tz[offset:offset + n])

    def shutdown(self):
        pass

    # the local read: the device now, plus the runs of chunks that were not pending
    def read(self, view, offset):
        view[:] = self.now[offset:offset + len(view)]
        runs = []
        for c in sorted(self.saved):
            lo, hi = max(offset, c * CHUNK), min(offset + len(view), (c + 1) * CHUNK)
            if lo < hi:
                runs.append((lo, hi - lo))
        self.fixed_bytes += sum(n for _, n in runs)
        return runs

    def close(self):
        pass


@dataclass
class FakeMember:
    where: str
    exports: list
    pressure: bool = False
    side_bytes: int = 0
    nbd: dict = field(default_factory=dict)
    views: dict = field(default_factory=dict)
    local: dict = field(default_factory=dict)


class FakeGroup:
    def __init__(self, members, views):
        self.members = members
        self.views = views
        self.released: list[tuple[str, int]] = []  # (export, chunk), in release order
        self.asked_saved: list[str] = []

    def check(self):
        pass

    def explain(self):
        return None

    def release(self, member, export, ranges):
        for first, count in ranges:
            self.released += [(export, c) for c in range(first, first + count)]

    def saved(self, member, export, limit):
        self.asked_saved.append(export)
        done = {c for e, c in self.released if e == export}
        return sorted(c for c in self.views[export].saved if c not in done)[:limit]


class FakeViewsCopier(Copier):
    def _open_view(self, export, member):
        view = self.group.views[export]
        self.stats["read_path"][export] = "local"
        return ViewReader(export, [view], pieces(self.plan.datasets, self.chunk, export), view)


def run_copier(datasets, views, members, owner, host_memory=8 << 20, progress=None):
    group = FakeGroup(members, views)
    out = io.BytesIO()
    header = Header(tool_version="test", time_zero="2026-12-01T00:00:00+00:00", chunk_size=CHUNK,
                    datasets=[StreamDataset(d.name, d.size) for d in datasets])
    writer = StreamWriter(out, header)
    copier = FakeViewsCopier(group, Plan(datasets, owner, []), writer, CHUNK, host_memory, progress=progress)
    if progress is not None:
        progress.copier = copier
    copier.run()
    writer.finish()
    out.seek(0)
    images = {d.name: bytearray(d.size) for d in datasets}
    for rec in StreamReader(out).records():
        images[rec.dataset][rec.offset:rec.offset + len(rec.data)] = rec.data
    return copier, group, images


def stripe_image(legs, chunk):
    out = bytearray()
    for i in range(SIZE // chunk * len(legs)):
        leg = legs[i % len(legs)]
        at = (i // len(legs)) * chunk
        out += leg.tz[at:at + chunk]
    return out


def setup_two_members(saved_x=(), saved_y=()):
    views = {"x": FakeView(1, saved_x), "y": FakeView(2, saved_y), "z": FakeView(3)}
    m1 = FakeMember("s1", [{"name": "x", "size": SIZE}, {"name": "y", "size": SIZE}])
    m2 = FakeMember("s2", [{"name": "z", "size": SIZE}])
    owner = {"x": m1, "y": m1, "z": m2}
    datasets = [Dataset("head", "x:0+128K", Linear([("x", 0, 2 * CHUNK)])),
                Dataset("vol", "stripe:16K:y,z", Striped(16 << 10, ["y", "z"], [SIZE, SIZE])),
                Dataset("rest", "x:128K-1M", Linear([("x", 2 * CHUNK, SIZE - 2 * CHUNK)]))]
    return views, [m1, m2], owner, datasets


def test_copier_stream_holds_every_dataset_at_time_zero_in_the_order_given():
    views, members, owner, datasets = setup_two_members(saved_x={1, 9}, saved_y={3})
    copier, group, images = run_copier(datasets, views, members, owner)
    assert images["head"] == views["x"].tz[:2 * CHUNK]
    assert images["vol"] == stripe_image([views["y"], views["z"]], 16 << 10)
    assert images["rest"] == views["x"].tz[2 * CHUNK:]
    assert copier.stats["local_refetched_bytes"] == 3 * CHUNK, "saved chunks are read again through the view"


def test_copier_releases_every_tracked_chunk_exactly_once():
    views, members, owner, datasets = setup_two_members()
    _, group, _ = run_copier(datasets, views, members, owner)
    every = [(e, c) for e in "xyz" for c in range(SIZE // CHUNK)]
    assert sorted(group.released) == sorted(every)


def test_copier_under_pressure_fetches_saved_chunks_first_and_the_stream_is_unchanged():
    late = {13, 14, 15}  # the end of "rest": the stream reaches them last
    views, members, owner, datasets = setup_two_members(saved_x=late)
    members[0].pressure = True
    copier, group, images = run_copier(datasets, views, members, owner)
    assert images["rest"] == views["x"].tz[2 * CHUNK:]
    assert group.asked_saved, "pressure makes the copier ask for the saved chunks"
    assert copier.stats["chunks_opportunistic"] >= len(late)
    first_release = group.released.index(("x", 0))
    assert all(group.released.index(("x", c)) < first_release for c in late), \
        "the saved chunks are released before the stream reaches them"


def test_copier_publishes_counters_the_heartbeat_may_read_while_it_copies():
    views, members, owner, datasets = setup_two_members()
    copier, _, _ = run_copier(datasets, views, members, owner)
    published = copier.published
    assert published["read_path"] == {"x": "local", "y": "local", "z": "local"}
    assert published["read_path"] is not copier.stats["read_path"], "never the copy loop's own dict"
    copier.stats["read_path"]["x"] = "changed"
    assert published["read_path"]["x"] == "local"


class Watcher:
    """A progress callback that also asks the copier why it is slow, as the display does."""

    def __init__(self):
        self.copier = None
        self.seen = []  # (done, dataset)
        self.reasons = []

    def __call__(self, done, dataset):
        self.seen.append((done, dataset))
        self.reasons.append(self.copier.slow_reason())


def test_copier_tells_progress_the_bytes_done_and_the_dataset_in_stream_order():
    views, members, owner, datasets = setup_two_members()
    watcher = Watcher()
    run_copier(datasets, views, members, owner, progress=watcher)
    done = [d for d, _ in watcher.seen]
    assert done == sorted(done) and done[-1] == sum(d.size for d in datasets)
    names = [n for _, n in watcher.seen]
    assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == ["head", "vol", "rest"]
    assert set(watcher.reasons) == {None}, "nothing slowed an idle copy"


def test_copier_says_side_store_pressure_is_why_it_is_slow():
    views, members, owner, datasets = setup_two_members(saved_x={13, 14, 15})
    members[0].pressure = True
    watcher = Watcher()
    run_copier(datasets, views, members, owner, progress=watcher)
    assert "side store under pressure: saved chunks fetched first" in watcher.reasons
