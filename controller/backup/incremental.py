"""`tzero backup --since BASE`: what an incremental backup needs from its base and from the
subsystems, and the refusal when the changes since the base are not known.

A backup records in its header extra, per export, the change-tracking generation its
session started (`tracking`); an incremental since BASE asks each subsystem, at `open`,
for the changes since BASE's generation of each export. It is taken only if BASE holds
the very datasets (names, layouts) this backup would, and every subsystem knows every
export's changes since then; otherwise it is refused with the reason, or, with
--full-if-needed, a full backup is taken and the summary says why.
"""

import os
import posixpath
from dataclasses import dataclass

from backupformat import Base, Header
from common.objectstore import is_s3_uri
from controller.backup.dataspec import DatasetSpec, parse_dataset
from controller.backup.group import ConsistencyGroup, Since
from controller.backup.layout import describe
from controller.backup.plan import Plan
from controller.errors import TzeroError, UsageError
from controller.restore.verify import opened_backup


@dataclass
class BaseBackup:
    """The backup an incremental counts from, as its header and trailer say."""

    path: str
    header: Header
    digest: str  # its stream digest, as its trailer says (tzero verify checks it whole)

    @classmethod
    def read(cls, path: str, output: str) -> "BaseBackup":
        """BASE at PATH, for a backup going to OUTPUT; UsageError if the one would replace the other."""
        if path == "-":
            raise UsageError("--since takes a backup file, not standard input")
        if output != "-" and _same(output, path):
            raise UsageError(f"--since {path} is the backup file -o would replace")
        with opened_backup(path, random_access=True) as reader:
            digest = reader.read_trailer().digest
            return cls(path, reader.header, digest)

    def placement_note(self, output: str) -> str | None:
        """A word for the user when the incremental will not find BASE beside it by name."""
        if output == "-" or _same(_folder(output), _folder(self.path)):
            return None
        return (f"note: {os.path.basename(self.path)} is not in the directory of {output}: restore, verify and "
                f"serve-backup of it will need --base {self.path}")

    def link(self) -> Base:
        """What the incremental's header records of it."""
        return Base(posixpath.basename(self.path) if is_s3_uri(self.path) else os.path.basename(self.path),
                    self.digest, self.header.time_zero)

    def specs(self) -> list[DatasetSpec]:
        """Its datasets as --dataset would give them: an incremental backs up the same ones. None
        (every export whole) when its header does not say: problem() then says what differs."""
        try:
            return [parse_dataset(f"{d['name']}={d['spec']}") for d in self._described()]
        except (UsageError, KeyError, TypeError):
            return []

    def _described(self) -> list[dict[str, object]]:
        described = self.header.extra.get("datasets")
        if not isinstance(described, list) or not all(isinstance(d, dict) for d in described):
            return []
        return described

    def problem(self, plan: Plan) -> str | None:
        """Why an incremental of PLAN's datasets cannot count from this backup, or None."""
        ours = [{k: v for k, v in describe(d).items() if k != "spec"} for d in plan.datasets]
        theirs = [{k: v for k, v in d.items() if k != "spec"} for d in self._described()]
        if ours != theirs:
            return (f"{self.path} holds other datasets ({', '.join(d.name for d in self.header.datasets)}, "
                    "or laid out otherwise) than this backup would")
        generations = self.header.extra.get("tracking")
        if not isinstance(generations, dict):
            return f"{self.path} records no change-tracking generation (a tzero without change tracking took it)"
        missing = [e for e in _exports(plan) if not isinstance(generations.get(e), str)]
        if missing:
            return f"{self.path} records no change-tracking generation for export {missing[0]!r}"
        return None

    def since(self, plan: Plan) -> Since:
        """Control path -> {export: the generation this backup started}, for open's `since`."""
        generations = self.header.extra["tracking"]
        assert isinstance(generations, dict), "problem() checked it"
        since: Since = {}
        for export in _exports(plan):
            since.setdefault(plan.owner[export].where, {})[export] = generations[export]
        return since


def _exports(plan: Plan) -> list[str]:
    return sorted({e for ds in plan.datasets for e in ds.exports})


def open_sessions(group: ConsistencyGroup, plan: Plan, base: BaseBackup | None, fallback: bool) -> str | None:
    """Open the sessions of PLAN; with BASE, counting from it. Returns None for an incremental
    backup, else why it is a full one. Without FALLBACK, an incremental that cannot be taken is a
    TzeroError (exit 1) saying why and what to do, and nothing stays open."""
    if base is None:
        group.open(plan.tracks())
        return "no --since"
    problem = base.problem(plan)
    since = base.since(plan) if problem is None else {}
    problem = problem or group.unknown_changes(since)
    if problem is None:
        group.open(plan.tracks(), since, plan.keeps())
        problem = group.unknown_changes(since)
        if problem is None:
            return None
        group.end_sessions(f"changes since {base.path} unknown")
    if not fallback:
        raise TzeroError(f"no incremental backup since {base.path}: {problem}; take a full backup "
                         "(without --since), or add --full-if-needed to take one instead of refusing")
    group.open(plan.tracks())
    return problem


def changed_chunks(group: ConsistencyGroup, plan: Plan) -> dict[str, bytes | bytearray]:
    """Export -> its chunks changed since the base (one byte each), asked after time zero."""
    return {e: group.changed_chunks(plan.owner[e], e) for e in _exports(plan)}


def generations(group: ConsistencyGroup, plan: Plan) -> dict[str, str]:
    """Export -> the generation this backup's session starts, for its header's `tracking`."""
    found: dict[str, str] = {}
    for export, m in plan.owner.items():
        if m.generation and export in _exports(plan):
            found[export] = m.generation
    return found


def _folder(path: str) -> str:
    """Where PATH's siblings are: its directory, or an object's key prefix."""
    return posixpath.dirname(path) if is_s3_uri(path) else os.path.dirname(os.path.abspath(path))


def _same(a: str, b: str) -> bool:
    """Whether A and B name the same file (or folder, or object, or key prefix)."""
    if is_s3_uri(a) or is_s3_uri(b):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)
