"""Every ```python block of README.md runs, so the README cannot drift from the code.

Each block runs in its own interpreter (readme_runner.py) in a fresh temporary directory, so
`events.db` and friends land there. Example addresses are replaced before it runs:
`http://127.0.0.1:8080` by a local SSE server on 127.0.0.1 streaming a few events, and a
`postgresql://` URL by the test server (EVENTQUEUE_TEST_PG_URL) in a fresh schema, dropped
afterwards; without a reachable server such a block is skipped with one line.

A block that calls `asyncio.run` is a whole program and runs as one. Any other block is a
fragment: it runs as the body of a coroutine in which the names of `eventqueue.__all__`, `q` (an
open queue), `event` and `events` (valid sample events) are defined (see readme_runner.py).

An HTML comment on the line(s) before a block's fence changes how it runs; keep them rare and
always give the reason in parentheses:

    <!-- readme-test: interrupt (why) -->  runs until stopped: once it has printed a line it is
                                           sent SIGINT, and must then exit 0
    <!-- readme-test: skip (why) -->       compiled (syntax checked) but not run
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgtest
import pytest

from eventqueue.tools.sse_server import SSEServer

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
RUNNER = HERE / "readme_runner.py"
DEADLINE_S = 60  # a bound on each block: one that hangs fails with its line instead
MODES = ("interrupt", "skip")
_FENCE = re.compile(r"^```python\s*$")
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<mode>[\w-]+)\s*(?:\((?P<why>.*)\))?\s*-->\s*$")
_EXAMPLE_SSE = "http://127.0.0.1:8080"
_EXAMPLE_PG = re.compile(r"postgres(?:ql)?://[^\s\"']+")


@dataclass(frozen=True)
class Block:
    """One ```python block: the README line of its fence, its text and its marker if any."""

    line: int
    text: str
    mode: str | None = None
    why: str | None = None

    @property
    def where(self) -> str:
        return f"README.md line {self.line} (the ```python block starting there)"


def blocks(text: str) -> list[Block]:
    """Every ```python block of `text`, with the marker comment just above it (blank lines
    between are allowed)."""
    lines = text.splitlines()
    found = []
    i = 0
    while i < len(lines):
        if not _FENCE.match(lines[i]):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md line {i + 1}: a ```python block is never closed")
        mode, why = _marker_above(lines, i)
        found.append(Block(i + 1, "\n".join(lines[i + 1 : end]) + "\n", mode, why))
        i = end + 1
    return found


def _marker_above(lines: list[str], fence: int) -> tuple[str | None, str | None]:
    above = fence - 1
    while above >= 0 and not lines[above].strip():
        above -= 1
    if above < 0 or "readme-test" not in lines[above]:
        return None, None
    match = _MARKER.match(lines[above].strip())
    if match is None:
        raise AssertionError(f"README.md line {above + 1}: malformed marker {lines[above]!r}")
    return match["mode"], match["why"]


README_BLOCKS = blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_valid_markers() -> None:
    assert any("from eventqueue.sources import sse_source" in b.text for b in README_BLOCKS)
    for block in README_BLOCKS:
        if block.mode is not None:
            assert block.mode in MODES, f"{block.where}: unknown readme-test mode {block.mode!r}"
            assert block.why, f"{block.where}: a readme-test marker says why, in parentheses"


def test_markers_are_read_from_the_line_above_the_fence() -> None:
    text = "x\n<!-- readme-test: skip (a reason) -->\n\n```python\npass\n```\n```python\n1\n```\n"
    assert blocks(text) == [
        Block(4, "pass\n", "skip", "a reason"),
        Block(7, "1\n", None, None),
    ]


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"README.md:{b.line}" for b in README_BLOCKS])
async def test_readme_block_runs(block: Block, tmp_path: Path) -> None:
    first_line = block.line + 1
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        compile("\n" * (first_line - 1) + block.text, "README.md", "exec", flags=flags)
    except SyntaxError as exc:
        pytest.fail(f"{block.where}: does not compile: {exc}", pytrace=False)
    if block.mode == "skip":
        pytest.skip(f"{block.where}: not run ({block.why})")
    with _postgres_for(block) as pg_url:
        async with SSEServer(_stream()) as server:
            text = block.text.replace(_EXAMPLE_SSE, server.url.rstrip("/"))
            if pg_url is not None:
                text = _EXAMPLE_PG.sub(pg_url, text)
            code, out, err = await _run(block, text, first_line, tmp_path)
    if block.mode == "interrupt" and not out:
        pytest.fail(f"{block.where}: printed nothing before it ended\n{err[-4000:]}", pytrace=False)
    if code != 0:
        pytest.fail(
            f"{block.where}: exited {code}\n--- stdout ---\n{out[-2000:]}\n"
            f"--- stderr ---\n{err[-4000:]}",
            pytrace=False,
        )


def _stream() -> list[dict[str, Any]]:
    """What the local SSE server sends: a few orders and a heartbeat (event_created messages)."""
    orders = [
        {
            "event_type": "order",
            "event_name": "order_created",
            "aggregate_id": f"o-{n}",
            "attributes": {"total": n},
        }
        for n in range(1, 4)
    ]
    heartbeat = {
        "event_type": "system",
        "event_name": "heartbeat",
        "aggregate_id": "h",
        "attributes": {},
    }
    return [*orders, heartbeat]


@contextlib.contextmanager
def _postgres_for(block: Block) -> Iterator[str | None]:
    """A fresh schema's URL when the block names a PostgreSQL URL (skip if there is no server)."""
    if not _EXAMPLE_PG.search(block.text):
        yield None
        return
    reason = pgtest.unreachable_reason(pgtest.pg_url())
    if reason is not None:
        pytest.skip(f"{block.where}: {reason}")
    with pgtest.fresh_schema(pgtest.pg_url()) as url:
        yield url


async def _run(block: Block, text: str, first_line: int, cwd: Path) -> tuple[int, str, str]:
    """Run the block in its own interpreter; (exit code, stdout, stderr)."""
    source = cwd / "block.py"
    source.write_text(text, encoding="utf-8")
    mode = "script" if _is_program(text) else "body"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, str(RUNNER), str(source), str(first_line), mode),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Unbuffered: the `interrupt` handshake is the block's first line, printed without flush.
        env={**os.environ, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    errors = asyncio.ensure_future(proc.stderr.read())
    code: int | None = None
    out = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DEADLINE_S):
            if block.mode == "interrupt":
                out = await proc.stdout.readline()  # the handshake: it printed its first line
                if proc.returncode is None:
                    proc.send_signal(signal.SIGINT)
            out += await proc.stdout.read()
            code = await proc.wait()
    if code is None:
        proc.kill()
        await proc.wait()
        hint = "; a block that runs until stopped needs <!-- readme-test: interrupt (why) -->"
        pytest.fail(f"{block.where}: still running after {DEADLINE_S} s{hint}", pytrace=False)
    return code, out.decode(errors="replace"), (await errors).decode(errors="replace")


def _is_program(text: str) -> bool:
    """True when the block calls asyncio.run itself: a whole program, not a fragment."""
    tree = compile(
        text, "README.md", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "asyncio"
        ):
            return True
    return False
