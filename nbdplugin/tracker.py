"""The change maps of one subsystem's exports: made or loaded at start, asked at `open`,
paged out by `changes`, saved at a clean stop. tracking.py is one map; changestate.py the
files; this is what the subsystem's requests do with them.

Without a state directory the maps live in memory only: they count changes while the
subsystem runs, and a restart starts them afresh (the next incremental is then refused,
never wrong). With tracking off there are no maps and every `since` is unknown.

Made by nbdkit's main thread at start-up and saved by it at cleanup; in between, `since`
and `changes` run on control connections' threads and only read what the maps lock.
"""

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from common.concordance import runs
from common.protocol import ProtocolError, Reply
from nbdplugin.changestate import StateDir, StateError
from nbdplugin.device import Device
from nbdplugin.tracking import KEEP_GENERATIONS, ChangeMap, Since

if TYPE_CHECKING:  # subsystem.py imports this module
    from nbdplugin.subsystem import Export

OFF = "change tracking is off on this subsystem (tzero serve --no-tracking)"


class Tracker:
    def __init__(self, devices: list[Device], chunk_size: int, state: StateDir | None = None,
                 enabled: bool = True) -> None:
        """Every device's map: loaded from STATE (its file then says "running"), or new."""
        # set at start-up, never changed (the maps lock themselves)
        self.state = state
        self.enabled = enabled
        self.devices = {d.name: d for d in devices}
        self.maps: dict[str, ChangeMap] = {}
        if enabled:
            for d in devices:
                self.maps[d.name] = state.load(d, chunk_size) if state else ChangeMap(d.name, d.size, chunk_size)

    def hello(self) -> Reply:
        return {"enabled": self.enabled, "state_dir": self.state.path if self.state else None,
                "keep_generations": KEEP_GENERATIONS}

    def since(self, export: str, generation: str) -> Since:
        m = self.maps.get(export)
        return m.since(generation) if m is not None else Since(False, OFF)

    @staticmethod
    def checked_since(since: Mapping[str, object], names: list[str]) -> dict[str, str]:
        """open's "since" field, validated: {export of the session: generation id}."""
        for name, generation in since.items():
            if name not in names:
                raise ProtocolError("unknown-export", f"since names {name!r}, which is not in the session")
            if not isinstance(generation, str) or not generation:
                raise ProtocolError("bad-message", "open: since maps an export to a generation id (a string)")
        return {k: str(v) for k, v in since.items()}

    @staticmethod
    def changes(changed: bytes | bytearray, first: int, limit: int) -> Reply:
        """The `changes` reply: up to LIMIT runs [first, count] of CHANGED from chunk FIRST on, and
        where the next page starts (None: no more)."""
        if first < 0 or first > len(changed) or limit <= 0:
            raise ProtocolError("bad-message", f"changes: first {first} and limit {limit} must lie within "
                                               f"0..{len(changed)} and be positive")
        ranges: list[list[int]] = []
        following = None
        for start, count in runs(changed, first):
            if len(ranges) == limit:
                following = start
                break
            ranges.append([start, count])
        return {"ranges": ranges, "next": following}

    def committed(self, names: list[str], log: Callable[[str], None]) -> None:
        """A session closed normally on exports NAMES: their files learn the new generation (still
        "running"), so that after an unclean stop the refusal can say what happened to it."""
        if self.state is None:
            return
        for name in names:
            if name in self.maps:
                try:
                    self.state.save(self.maps[name], self.devices[name], "running")
                except StateError as e:
                    log(f"export {name}: {e}")

    def stopped(self, exports: Mapping[str, "Export"], drained: Mapping[str, bool],
                log: Callable[[str], None]) -> None:
        """A clean stop, every gate sealed (DRAINED: whether its mutations in flight finished):
        sync each device and save its map as "stopped". A map whose gate did not drain, or whose
        device or file fails, stays "running" on disk: unknown at the next start."""
        for name, m in self.maps.items():
            m.merge_back()  # a session that could not finish ending: its changes count
            if self.state is None:
                continue
            device = exports[name].device
            if not drained.get(name, False):
                log(f"export {name}: writes still in flight at stop; its change map will not be trusted")
                continue
            try:
                device.sync()
                self.state.save(m, device, "stopped")
            except (OSError, StateError) as e:
                log(f"export {name}: change map not saved, it will not be trusted: {e}")

    def status(self) -> dict[str, object]:
        return {name: m.status() for name, m in self.maps.items()}

