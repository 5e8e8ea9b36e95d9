"""A FUSE passthrough filesystem that forgets, on command, what was not fsynced: a power cut.

    python lazyfs.py BACKING MOUNTPOINT CONTROL_SOCKET

Mounts BACKING at MOUNTPOINT (libfuse 3 through mfusepy), records what is not yet durable in a
`journal.Journal`, and prints `POWERLOSS_READY` on stdout once the mount answers. It runs
single-threaded behind one lock, so a control command never interleaves with an operation.

The control socket takes one JSON command per connection and answers one JSON line:

    {"cmd": "cut", "mode": "torn-sector", "seed": 7}
        the power cut, now (the harness has killed and reaped every writer first)
    {"cmd": "arm", "op": "write", "match": "-wal$", "n": 5, "pid": 123, "mode": ..., "seed": ...}
        the power cut at the n-th matching operation (op: write | fsync | any; match: a regular
        expression searched in the path): SIGKILL `pid`, apply a write that triggers it (the
        cut tears it), cut, then fail every operation with EIO until "revive"
    {"cmd": "revive"}   {"cmd": "disarm"}   {"cmd": "status"}

Regular files are opened with direct_io, so every write(2) reaches this process as issued and no
page cache outlives a cut. `-shm` files keep the page cache: SQLite maps them with mmap.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import mfusepy
from journal import GRAVEYARD, FileState, Journal, volatile

READY = "POWERLOSS_READY"
_STAT_KEYS = [
    "st_mode",
    "st_ino",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_blocks",
]


@dataclass
class Handle:
    """An open file: its real descriptor and journal state, from one cut generation."""

    fd: int
    state: FileState
    generation: int
    append: bool
    sync: bool


@dataclass
class Trigger:
    """A cut armed to fire by itself on the n-th matching operation."""

    op: str
    match: re.Pattern[str]
    n: int
    pid: int
    mode: str
    seed: int
    seen: int = 0


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class PowerLossFS(mfusepy.Operations):
    """Passthrough to a folder; what was not fsynced can be dropped by `cut`."""

    use_ns = True

    def __init__(self, root: str) -> None:
        self.journal = Journal(root)
        self._mutex = threading.RLock()
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.generation = 0
        self.dead = False
        self.trigger: Trigger | None = None
        self.counts: Counter[str] = Counter()
        self.cuts: list[dict[str, Any]] = []

    # --- plumbing -----------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            # No attribute or name caching: a cut changes files behind the kernel's back.
            config.entry_timeout = config.negative_timeout = config.attr_timeout = 0.0
            config.use_ino = 1  # stable inode numbers (eventqueue compares them, F13)
            config.hard_remove = 1  # an unlinked open file is unlinked, not renamed .fuse_hidden
        print(READY, flush=True)

    def _enter(self, op: str, path: str | None) -> Trigger | None:
        """Count the op; refuse it after a triggered cut; return an armed trigger that fires."""
        if self.dead:
            raise _fail(errno.EIO)
        self.counts[op] += 1
        trigger = self.trigger
        if trigger is None or trigger.op not in (op, "any") or path is None:
            return None
        if not trigger.match.search(path):
            return None
        trigger.seen += 1
        if trigger.seen < trigger.n:
            return None
        self.trigger = None
        return trigger

    def _fire(self, trigger: Trigger, op: str, path: str) -> OSError:
        """The armed cut: kill the writer, drop what is not durable, play dead until revived.

        A write that fires it has been applied first, and is the one the cut may tear."""
        # The writer dies first: whatever it still has in flight meets a dead filesystem.
        with contextlib.suppress(ProcessLookupError):
            os.kill(trigger.pid, signal.SIGKILL)
        self.dead = True
        report = self._cut(trigger.mode, trigger.seed, torn_last=path if op == "write" else None)
        report["triggered"] = {"op": op, "path": path, "n": trigger.n}
        return _fail(errno.EIO)

    def _before(self, op: str, path: str) -> None:
        """For ops a trigger cuts before they happen."""
        fired = self._enter(op, path)
        if fired is not None:
            raise self._fire(fired, op, path)

    def _handle(self, fi: Any) -> Handle:
        handle = self.handles.get(fi.fh)
        if handle is None or handle.generation != self.generation:
            raise _fail(errno.EIO)  # opened before a cut: that process is gone
        return handle

    def _new_handle(self, fd: int, path: str, flags: int, fi: Any) -> int:
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        sync = bool(flags & (os.O_SYNC | os.O_DSYNC))
        state = self.journal.state(path)
        self.handles[fh] = Handle(fd, state, self.generation, bool(flags & os.O_APPEND), sync)
        fi.fh = fh
        fi.direct_io = 0 if volatile(path) else 1
        return 0

    def _cut(self, mode: str, seed: int, torn_last: str | None = None) -> dict[str, Any]:
        report = self.journal.cut(mode, random.Random(seed), torn_last)
        self.generation += 1
        report["seed"] = seed
        report["at"] = time.monotonic()
        self.cuts.append(report)
        return report

    # --- control ------------------------------------------------------------------------

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one control command (under the lock)."""
        with self._mutex:
            cmd = request.get("cmd")
            if cmd == "cut":
                return self._cut(request.get("mode", "drop"), int(request.get("seed", 0)))
            if cmd == "arm":
                self.trigger = Trigger(
                    request.get("op", "write"),
                    re.compile(request["match"]),
                    int(request["n"]),
                    int(request["pid"]),
                    request.get("mode", "drop"),
                    int(request.get("seed", 0)),
                )
                return {"armed": True}
            if cmd == "disarm":
                fired = self.trigger is None
                self.trigger = None
                return {"fired": fired, "dead": self.dead}
            if cmd == "revive":
                self.dead = False
                return {"dead": False}
            if cmd == "status":
                return {
                    "dead": self.dead,
                    "armed": self.trigger is not None,
                    "cuts": len(self.cuts),
                    "last_cut": self.cuts[-1] if self.cuts else None,
                    "counts": dict(self.counts),
                    "pending": self.journal.pending(),
                    "synced_at": dict(self.journal.synced_at),
                }
            raise ValueError(f"unknown command {cmd!r}")

    # --- operations ---------------------------------------------------------------------

    def _path_ok(self, path: str) -> str:
        if path.lstrip("/").split("/", 1)[0] == GRAVEYARD:
            raise _fail(errno.ENOENT)
        return self.journal.real(path)

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        with self._mutex:
            self._enter("getattr", None)
            if path is None and fh is not None:
                st = os.fstat(self._handle(fh).fd)
            else:
                st = os.lstat(self._path_ok(path))
            attrs = {key: getattr(st, key) for key in _STAT_KEYS}
            for key in ("st_atime", "st_mtime", "st_ctime"):
                attrs[key] = getattr(st, key + "_ns")
            return attrs

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self._mutex:
            self._enter("readdir", None)
            real = self._path_ok(path)
            entries = [(".", os.lstat(real)), ("..", os.lstat(os.path.dirname(real)))]
            with os.scandir(real) as found:
                entries += [(e.name, e.stat(follow_symlinks=False)) for e in found]
            # Real inode numbers: with use_ino a zero one would hide the entry.
            return [
                (name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0)
                for name, st in entries
                if not (path == "/" and name == GRAVEYARD)
            ]

    def opendir(self, path: str) -> int:
        with self._mutex:
            self._enter("opendir", None)
            if not os.path.isdir(self._path_ok(path)):
                raise _fail(errno.ENOTDIR)
            return 0

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            self._before("fsyncdir", path)
            self.journal.fsyncdir(path)
            return 0

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._enter("access", None)
            if not os.access(self._path_ok(path), amode):
                raise _fail(errno.EACCES)
            return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.journal.root)
        keys = "f_bavail f_bfree f_blocks f_bsize f_favail f_ffree f_files f_flag f_frsize"
        return {key: getattr(st, key) for key in keys.split()} | {"f_namemax": 255}

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            self._enter("chmod", None)
            os.chmod(self._path_ok(path), mode)
            return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._mutex:
            self._enter("chown", None)
            os.chown(self._path_ok(path), uid, gid)
            return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._mutex:
            self._enter("utimens", None)
            os.utime(self._path_ok(path), ns=times)
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            self._before("mkdir", path)
            self._path_ok(path)
            self.journal.mkdir(path, mode)
            return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            self._before("rmdir", path)
            self._path_ok(path)
            self.journal.rmdir(path)
            return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            self._before("unlink", path)
            self._path_ok(path)
            self.journal.unlink(path)
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            self._before("rename", new)
            self._path_ok(old)
            self._path_ok(new)
            self.journal.rename(old, new)
            return 0

    def open(self, path: str, fi: Any) -> int:
        with self._mutex:
            self._enter("open", None)
            fd = os.open(self._path_ok(path), _backing_flags(fi.flags))
            if fi.flags & os.O_TRUNC:
                self.journal.truncate(path, 0)
            return self._new_handle(fd, path, fi.flags, fi)

    def create(self, path: str, mode: int, fi: Any) -> int:
        with self._mutex:
            self._before("create", path)
            self._path_ok(path)
            fd = self.journal.create(path, _backing_flags(fi.flags), mode)
            if fi.flags & os.O_TRUNC:
                self.journal.truncate(path, 0)
            return self._new_handle(fd, path, fi.flags, fi)

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        with self._mutex:
            self._enter("read", None)
            return os.pread(self._handle(fh).fd, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        with self._mutex:
            handle = self._handle(fh)
            fired = self._enter("write", handle.state.path)
            if handle.append:
                offset = os.fstat(handle.fd).st_size
            written = self.journal.write(handle.state, handle.fd, offset, data)
            if fired is not None:
                raise self._fire(fired, "write", handle.state.path)
            if handle.sync:
                self.journal.fsync(handle.state, time.monotonic())
            return written

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        with self._mutex:
            self._before("truncate", path)
            self._path_ok(path)
            self.journal.truncate(path, length)
            return 0

    def fsync(self, path: str, datasync: int, fh: Any) -> int:
        with self._mutex:
            started = time.monotonic()
            handle = self._handle(fh)
            self._before("fsync", handle.state.path)
            self.journal.fsync(handle.state, started)
            return 0

    def flush(self, path: str, fh: Any) -> int:
        return 0

    def release(self, path: str, fh: Any) -> int:
        with self._mutex:
            handle = self.handles.pop(fh.fh, None)
            if handle is not None:
                os.close(handle.fd)
            return 0


def _backing_flags(flags: int) -> int:
    """Open flags for the real file: always readable (the journal reads pre-images), never
    creating, truncating or appending by itself (those are journaled here)."""
    drop = os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_APPEND | os.O_DIRECT
    return (flags & ~drop) | os.O_RDWR


def serve_control(fs: PowerLossFS, path: str) -> None:
    """Answer control commands on a Unix socket, one JSON line in, one out, per connection."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rw") as stream:
                try:
                    answer = {"ok": True, **fs.control(json.loads(stream.readline()))}
                except Exception as exc:  # reported to the caller, never kills the server
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                stream.write(json.dumps(answer) + "\n")
                stream.flush()

    threading.Thread(target=loop, name="control", daemon=True).start()


def main(argv: list[str]) -> None:
    backing, mountpoint, control = argv
    fs = PowerLossFS(backing)
    serve_control(fs, control)
    mfusepy.FUSE(
        fs,
        mountpoint,
        raw_fi=True,
        foreground=True,
        nothreads=True,
        fsname="powerloss",
        auto_unmount=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
