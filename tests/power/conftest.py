"""Fixtures of the power-loss tier. Each test module skips itself (one summary line for the
tier, see mount.skip_unless_available) where a FUSE filesystem cannot be mounted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mount import PowerLossMount


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PowerLossMount]:
    """A power-loss filesystem mounted for one test (backing folder and mount in tmp_path)."""
    with PowerLossMount(tmp_path / "fs") as mount:
        yield mount
