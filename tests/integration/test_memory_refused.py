"""`EventQueue.open(":memory:")` is refused with a ConfigError that says what to use instead,
before anything is created (issue 18.5): the queue needs a file every connection, process and
restart reaches, and its spill folder beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from eventqueue import ConfigError, EventQueue, EventQueueError
from eventqueue.core.config import Config
from eventqueue.tools.cli import main


@pytest.mark.parametrize("path", [":memory:", "file:q?mode=memory&cache=shared"])
async def test_an_in_memory_database_is_refused_with_what_to_do(
    path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a stray database or spill folder would appear

    with pytest.raises(ConfigError, match="in-memory database is not supported") as refused:
        async with EventQueue.open(path):
            pass

    assert isinstance(refused.value, EventQueueError)
    assert "tmp_path / 'events.db'" in str(refused.value)
    assert os.listdir(tmp_path) == []


def test_the_setting_is_refused_from_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENT_DB_PATH", ":memory:")
    with pytest.raises(ConfigError, match="in-memory"):
        Config.load()


def test_the_cli_refuses_it_with_the_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stats", "--db", ":memory:"])
    assert result.exit_code == 2
    assert "in-memory database is not supported" in result.output


def test_a_file_whose_name_only_mentions_memory_is_a_file(tmp_path: Path) -> None:
    assert Config(db_path=str(tmp_path / "memory.db")).db_path.endswith("memory.db")
