"""Runs one README block in a fresh interpreter: `python readme_runner.py BLOCK_FILE FIRST_LINE MODE`.

MODE "script": the block is a whole program (it calls asyncio.run) and runs as `__main__`.
MODE "body": the block is a fragment and runs as the body of a coroutine (top-level `await` and
`async with` allowed) whose namespace holds every name of `eventqueue.__all__`, `q` (an open
queue on prelude.db in the current directory), `event` (a valid sample event) and `events`
(three more, distinct). Either way tracebacks name README.md and the README's own line numbers.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import sys
from pathlib import Path
from typing import Any

import eventqueue


def sample(n: int) -> dict[str, Any]:
    """A valid event; distinct for each `n`."""
    return {
        "event_type": "order",
        "event_name": "order_created",
        "aggregate_id": f"order-{n}",
        "attributes": {"total": 10 * n},
    }


def compiled(path: str, first_line: int, flags: int = 0) -> Any:
    # Blank lines ahead of the block: tracebacks then point at README.md's own line numbers.
    text = "\n" * (first_line - 1) + Path(path).read_text(encoding="utf-8")
    return compile(text, "README.md", "exec", flags=flags, dont_inherit=True)


async def run_body(path: str, first_line: int) -> None:
    code = compiled(path, first_line, ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    names: dict[str, Any] = {"__name__": "__readme__"}
    names.update({name: getattr(eventqueue, name) for name in eventqueue.__all__})
    async with eventqueue.EventQueue.open("prelude.db") as q:
        names.update(q=q, event=sample(1), events=[sample(n) for n in (2, 3, 4)])
        result = eval(code, names)  # a coroutine when the block awaits at top level
        if inspect.iscoroutine(result):
            await result


def main() -> None:
    path, first_line, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "script":
        exec(compiled(path, first_line), {"__name__": "__main__"})
    else:
        asyncio.run(run_body(path, first_line))


if __name__ == "__main__":
    main()
