"""Where a scenario's databases live: files in the run's temporary folder (SQLite), or scratch
schemas on the server of `--db` (PostgreSQL), dropped when the scenario ends.

Each PostgreSQL database of a scenario (the queue, its variants, the raw baseline) is its own
schema `eqbench_<random>`, selected by libpq's `options=-csearch_path=...` in its URL, with its
spill folder in the run's temporary folder (never under ~/.local/state). Only schemas this run
created are dropped, and only by that prefix.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from eventqueue.core.config import Config
from eventqueue.store import Backend, Baseline, RawTools, backend_of, raw_tools
from eventqueue.tools.bench.harness import bench_config
from eventqueue.tools.bench.sqlite_baseline import SQLiteBaseline

SCRATCH_PREFIX = "eqbench_"


class Places:
    """One scenario's databases; `close()` drops its scratch schemas (PostgreSQL)."""

    def __init__(self, base: Config, tmp: Path, server: str | None) -> None:
        self.base = base
        self.tmp = tmp
        self.server = server
        self.backend: Backend = "sqlite" if server is None else backend_of(server)
        self._schemas: list[str] = []

    @property
    def copies_files(self) -> bool:
        """Whether a closed database can be copied as a file (SQLite); else it is loaded again."""
        return self.server is None

    async def config(self, name: str, **overrides: Any) -> Config:
        """A fresh database called `name`: `base` with those of `overrides` that are settings."""
        if self.server is None:
            return bench_config(self.base, self.tmp / f"{name}.db", **overrides)
        url = await self._tools().create_scratch(self.server, SCRATCH_PREFIX)
        self._schemas.append(url)
        config = bench_config(self.base, url, **overrides)
        return config.replace(spill_dir=str(self.tmp / f"{name}.spill"))

    def copy(self, config: Config, name: str) -> Config:
        """SQLite: `config` on a copy of its closed (checkpointed) file, called `name`."""
        copied = config.replace(db_path=str(self.tmp / f"{name}.db"))
        shutil.copyfile(config.db_path, copied.db_path)
        return copied

    async def raw(self, name: str, *, copy_of: Config | None = None) -> Baseline:
        """The raw baseline on a fresh database called `name` (SQLite: on a copy of
        `copy_of`'s file when given, so it holds the queue's rows)."""
        if self.server is None:
            path = self.tmp / f"{name}.db"
            if copy_of is not None:
                shutil.copyfile(copy_of.db_path, path)
            durability, busy_ms = self.base.durability, self.base.busy_timeout_ms
            return SQLiteBaseline.connect(str(path), durability=durability, busy_timeout_ms=busy_ms)
        config = await self.config(name)
        return await raw_tools(config).open_baseline(config)

    async def close(self) -> None:
        """Drop every scratch schema made here, with all in it."""
        while self._schemas:
            await self._tools().drop_scratch(self._schemas.pop(), SCRATCH_PREFIX)

    def _tools(self) -> RawTools:
        assert self.server is not None
        return raw_tools(self.base.replace(db_path=self.server))
