"""What a power cut may keep: the durability model behind the power-loss filesystem.

The filesystem (lazyfs.py) passes every operation through to a real folder at once, so running
programs see their own writes, and records here what is not yet durable:

- a file's data operations (writes, truncations) until an fsync or fdatasync of that file;
- a directory's name operations (create, mkdir, unlink, rmdir, rename) until an fsync of that
  directory (for a rename: of both parents).

`cut()` is the power cut: every data operation not yet durable is undone from the pre-image kept
with it, then — by the mode — none, a prefix (the last one torn at a byte or a 512-byte sector
boundary) or a random subset of them is written again; then the name operations not yet durable
are undone, newest first. An unlinked or replaced file waits in a graveyard until its unlink is
durable, so an undone unlink brings back its durable contents.

Plain os calls on the backing folder; nothing of FUSE, so it can be tested on its own. Files
whose name ends in `-shm` are volatile: SQLite rebuilds its WAL index from the WAL whenever the
first connection opens, so its writes are passed through and never recorded.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

SECTOR = 512
MODES = ("drop", "torn-byte", "torn-sector", "reorder")
GRAVEYARD = ".powerloss-graveyard"  # in the backing root; hidden from the mount


def volatile(path: str) -> bool:
    """True for files whose contents never need to survive (SQLite's WAL index)."""
    return path.endswith("-shm")


@dataclass
class DataOp:
    """One write or truncation: enough to undo it (`before`) and to redo it (`data`)."""

    offset: int
    data: bytes  # the bytes written; empty for a truncation
    before: bytes  # the bytes it overwrote or cut off, at `offset`
    old_size: int
    new_size: int
    truncate: bool = False


@dataclass
class FileState:
    """A file's bytes not yet durable, and where its bytes are now."""

    path: str  # the path in the mount when last seen
    backing: str  # the real path now: in the backing folder, or in the graveyard
    pending: list[DataOp] = field(default_factory=list)


@dataclass
class NameOp:
    """A directory change not yet durable: `dirs` still need an fsync."""

    kind: str  # create | mkdir | unlink | rmdir | rename
    path: str
    dirs: set[str]
    target: str | None = None  # rename: the new path
    grave: str | None = None  # unlink / rename: where the removed or replaced file waits


def parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


class Journal:
    """The un-fsynced operations on one backing folder; every method runs the operation too."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.grave_dir = os.path.join(self.root, GRAVEYARD)
        os.makedirs(self.grave_dir, exist_ok=True)
        self.files: dict[str, FileState] = {}
        self.orphans: list[FileState] = []  # unlinked or replaced, unlink not yet durable
        self.names: list[NameOp] = []
        self.synced_at: dict[str, float] = {}  # path -> monotonic start of its last fsync
        self._graves = 0

    def real(self, path: str) -> str:
        """The backing path of a mount path ("/a/b")."""
        return os.path.join(self.root, path.lstrip("/"))

    def state(self, path: str) -> FileState:
        found = self.files.get(path)
        if found is None:
            found = self.files[path] = FileState(path, self.real(path))
        return found

    # --- data ---------------------------------------------------------------------------

    def write(self, state: FileState, fd: int, offset: int, data: bytes) -> int:
        """pwrite `data` to an open file, remembering what it overwrote."""
        if not volatile(state.path):
            size = os.fstat(fd).st_size
            before = os.pread(fd, max(0, min(len(data), size - offset)), offset)
            new_size = max(size, offset + len(data))
            state.pending.append(DataOp(offset, data, before, size, new_size))
        return os.pwrite(fd, data, offset)

    def truncate(self, path: str, length: int) -> None:
        """Truncate (or extend with zeros) to `length`, remembering what was cut off."""
        real = self.real(path)
        if not volatile(path):
            size = os.stat(real).st_size
            with open(real, "rb") as f:
                f.seek(length)
                before = f.read(max(0, size - length))
            op = DataOp(min(length, size), b"", before, size, length, truncate=True)
            self.state(path).pending.append(op)
        os.truncate(real, length)

    def fsync(self, state: FileState, started: float) -> None:
        """Everything written to the file so far is durable."""
        state.pending.clear()
        self.synced_at[state.path] = started

    # --- names --------------------------------------------------------------------------

    def create(self, path: str, flags: int, mode: int) -> int:
        """Open (creating) a file; a new name is recorded."""
        real = self.real(path)
        existed = os.path.lexists(real)
        fd = os.open(real, flags | os.O_CREAT, mode)
        if not existed:
            self.names.append(NameOp("create", path, {parent(path)}))
            self.files[path] = FileState(path, real)
        return fd

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self.real(path), mode)
        self.names.append(NameOp("mkdir", path, {parent(path)}))

    def rmdir(self, path: str) -> None:
        os.rmdir(self.real(path))
        self.names.append(NameOp("rmdir", path, {parent(path)}))

    def unlink(self, path: str) -> None:
        grave = self._bury(path)
        self.names.append(NameOp("unlink", path, {parent(path)}, grave=grave))

    def rename(self, old: str, new: str) -> None:
        if os.path.isdir(self.real(old)):
            raise OSError(errno.EXDEV, "renaming a directory is not supported here")
        grave = self._bury(new) if os.path.lexists(self.real(new)) else None
        os.rename(self.real(old), self.real(new))
        moved = self.files.pop(old, None) or FileState(old, self.real(old))
        moved.path, moved.backing = new, self.real(new)
        self.files[new] = moved
        self.names.append(NameOp("rename", old, {parent(old), parent(new)}, new, grave))

    def fsyncdir(self, path: str) -> None:
        """Every name change in this directory so far is durable."""
        path = path.rstrip("/") or "/"
        for op in self.names:
            op.dirs.discard(path)
        for op in [op for op in self.names if not op.dirs and op.grave]:
            self._forget_grave(op.grave)
        self.names = [op for op in self.names if op.dirs]

    def _bury(self, path: str) -> str:
        self._graves += 1
        grave = os.path.join(self.grave_dir, f"{self._graves:08d}")
        os.rename(self.real(path), grave)
        state = self.files.pop(path, None) or FileState(path, grave)
        state.backing = grave
        self.orphans.append(state)
        return grave

    def _forget_grave(self, grave: str) -> None:
        self.orphans = [s for s in self.orphans if s.backing != grave]
        if os.path.lexists(grave):
            os.unlink(grave)

    # --- the cut ------------------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """Operations not yet durable: data ops per file, and name ops."""
        counts = {s.path: len(s.pending) for s in [*self.files.values(), *self.orphans]}
        counts = {path: n for path, n in counts.items() if n}
        return {**counts, "<names>": len(self.names)}

    def cut(self, mode: str, rng: random.Random, torn_last: str | None = None) -> dict[str, Any]:
        """Power is lost: keep only what is durable (plus what `mode` lets through)."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        started = time.monotonic()
        report: dict[str, Any] = {"mode": mode, "files": {}, "names_undone": []}
        states = sorted([*self.files.values(), *self.orphans], key=lambda s: s.path)
        for state in states:
            if state.pending and os.path.lexists(state.backing):
                whole = torn_last == state.path
                report["files"][state.path] = _cut_file(state, mode, rng, whole)
            state.pending.clear()
        for op in reversed(self.names):
            self._undo(op)
            report["names_undone"].append(f"{op.kind} {op.path}")
        self.names.clear()
        self.files.clear()
        self.orphans.clear()
        shutil.rmtree(self.grave_dir, ignore_errors=True)
        os.makedirs(self.grave_dir, exist_ok=True)
        report["synced_at"] = dict(self.synced_at)
        report["seconds"] = round(time.monotonic() - started, 4)
        return report

    def _undo(self, op: NameOp) -> None:
        real = self.real(op.path)
        if op.kind == "create":
            _remove(real)
        elif op.kind == "mkdir":
            shutil.rmtree(real, ignore_errors=True)
        elif op.kind == "rmdir":
            os.makedirs(real, exist_ok=True)
        elif op.kind == "unlink":
            _restore(op.grave, real)
        elif op.kind == "rename":
            assert op.target is not None
            target = self.real(op.target)
            if os.path.lexists(target) and os.path.isdir(os.path.dirname(real)):
                os.rename(target, real)
            _restore(op.grave, target)


def _remove(real: str) -> None:
    if os.path.lexists(real):
        os.unlink(real)


def _restore(grave: str | None, real: str) -> None:
    if grave and os.path.lexists(grave) and os.path.isdir(os.path.dirname(real)):
        os.rename(grave, real)


def _cut_file(state: FileState, mode: str, rng: random.Random, keep_prefix: bool) -> dict[str, Any]:
    """Undo every pending op of one file, then redo what the mode keeps."""
    ops = state.pending
    fd = os.open(state.backing, os.O_RDWR)
    try:
        for op in reversed(ops):
            _undo_op(fd, op)
        durable_size = os.fstat(fd).st_size
        kept, torn = _choose(ops, mode, rng, keep_prefix)
        for op in kept:
            _redo_op(fd, op, None)
        if torn is not None:
            op, cut_at = torn
            _redo_op(fd, op, cut_at)
        return {
            "pending_ops": len(ops),
            "kept_ops": len(kept),
            "torn": None if torn is None else _torn_report(*torn),
            "durable_size": durable_size,
            "size": os.fstat(fd).st_size,
        }
    finally:
        os.close(fd)


def _torn_report(op: DataOp, kept: int) -> dict[str, Any]:
    # `next`: the first bytes the tear cut off, so a test can tell a tear between two records of
    # its own format from one inside a record.
    return {"offset": op.offset, "kept_bytes": kept, "next": op.data[kept : kept + 8].hex()}


def _choose(
    ops: list[DataOp], mode: str, rng: random.Random, keep_prefix: bool
) -> tuple[list[DataOp], tuple[DataOp, int] | None]:
    """The ops a cut keeps whole, and the one it keeps torn (op, bytes kept)."""
    if mode == "drop" or not ops:
        return [], None
    if mode == "reorder":
        return [op for op in ops if rng.random() < 0.5], None
    k = len(ops) - 1 if keep_prefix else rng.randrange(len(ops))
    last = ops[k]
    if last.truncate or len(last.data) < 2:
        return ops[:k], None
    if mode == "torn-byte":
        return ops[:k], (last, rng.randrange(1, len(last.data)))
    bounds = [
        b - last.offset
        for b in range((last.offset // SECTOR + 1) * SECTOR, last.offset + len(last.data), SECTOR)
    ]
    return ops[:k], ((last, rng.choice(bounds)) if bounds else None)


def _undo_op(fd: int, op: DataOp) -> None:
    if op.truncate and op.new_size < op.old_size:
        os.pwrite(fd, op.before, op.offset)  # the cut-off tail comes back
        return
    if op.before:
        os.pwrite(fd, op.before, op.offset)
    if op.new_size > op.old_size:
        os.ftruncate(fd, op.old_size)


def _redo_op(fd: int, op: DataOp, cut_at: int | None) -> None:
    if op.truncate:
        os.ftruncate(fd, op.new_size)
        return
    data = op.data if cut_at is None else op.data[:cut_at]
    os.pwrite(fd, data, op.offset)
