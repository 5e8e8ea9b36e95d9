"""The spill's on-disk record format: framing, checksums, and walking a segment's bytes.

A segment is a sequence of records: MAGIC b"EQS1", then little-endian u32 payload length,
f64 spilled_at, u32 crc32 over (length, spilled_at, payload), then the payload. A quarantine entry
is MAGIC b"EQQ1", i32 priority, u64 segment, u64 offset, u64 length, then the damaged bytes.
Byte-level only: no locks, no segment naming, no recovery policy (that is log.py).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

_MAGIC = b"EQS1"
_HEAD = struct.Struct("<4sIdI")  # magic, payload length, spilled_at, crc32
_META = struct.Struct("<Id")  # the (length, spilled_at) part the crc covers
_QMAGIC = b"EQQ1"
_QHEAD = struct.Struct("<4siQQQ")  # magic, priority, segment, offset, length
_CHUNK = 64 * 1024
_MAX_PAYLOAD = 0xFFFFFFFF


class _Span(NamedTuple):
    start: int
    end: int
    spilled_at: float
    payload: bytes | None  # None: damaged bytes [start, end)


def _frame(payload: bytes, spilled_at: float) -> bytes:
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"a spill record holds at most {_MAX_PAYLOAD} bytes, got {len(payload)}")
    meta = _META.pack(len(payload), spilled_at)
    crc = zlib.crc32(payload, zlib.crc32(meta))
    return _HEAD.pack(_MAGIC, len(payload), spilled_at, crc) + payload


def _read_record(f: BinaryIO, offset: int, size: int) -> tuple[float, bytes] | None:
    if size - offset < _HEAD.size:
        return None
    f.seek(offset)
    head = f.read(_HEAD.size)
    magic, length, spilled_at, crc = _HEAD.unpack(head)
    if magic != _MAGIC or length > size - offset - _HEAD.size:
        return None
    payload = f.read(length)
    if len(payload) != length or zlib.crc32(payload, zlib.crc32(head[4:16])) != crc:
        return None
    return spilled_at, payload


def _resync(f: BinaryIO, pos: int, size: int) -> int:
    """The offset of the next intact record at or after `pos`, or `size`."""
    while pos < size:
        f.seek(pos)
        chunk = f.read(_CHUNK + len(_MAGIC) - 1)
        i = chunk.find(_MAGIC)
        while i != -1:
            if _read_record(f, pos + i, size) is not None:
                return pos + i
            i = chunk.find(_MAGIC, i + 1)
        pos += _CHUNK
    return size


def _walk(f: BinaryIO, start: int, size: int) -> Iterator[_Span]:
    pos = start
    while pos < size:
        record = _read_record(f, pos, size)
        if record is None:
            end = _resync(f, pos + 1, size)
            yield _Span(pos, end, 0.0, None)
        else:
            end = pos + _HEAD.size + len(record[1])
            yield _Span(pos, end, record[0], record[1])
        pos = end


def _copy(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> None:
    src.seek(start)
    while start < end:
        chunk = src.read(min(_CHUNK, end - start))
        if not chunk:
            raise OSError(f"{src.name} shrank while being copied")
        dst.write(chunk)
        start += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _count_quarantine(path: Path) -> tuple[int, int]:
    count = size_total = pos = 0
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            while size - pos >= _QHEAD.size:
                magic, _, _, _, length = _QHEAD.unpack(f.read(_QHEAD.size))
                if magic != _QMAGIC or length > size - pos - _QHEAD.size:
                    break
                count += 1
                size_total += length
                pos += _QHEAD.size + length
                f.seek(pos)
    except FileNotFoundError:
        pass
    return count, size_total


def make_dirs_durably(path: str | os.PathLike[str]) -> None:
    """Create `path` and any missing parents, fsyncing each new entry's parent folder.

    A folder made with a plain mkdir exists only in the page cache until its parent is
    fsynced: a power cut would take it, and every fsynced record inside it, away (F16).
    """
    missing = []
    current = Path(os.path.abspath(path))
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            folder.mkdir()
        fd = os.open(folder.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
