"""The power-loss tier runs where a FUSE filesystem can be mounted, and is one skip line elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .mount import PowerLossMount, unavailable

_MISSING = unavailable()
if _MISSING is not None:
    pytest.skip(f"power-loss tier skipped: {_MISSING}", allow_module_level=True)


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PowerLossMount]:
    """A power-loss filesystem mounted for one test (backing folder and mount in tmp_path)."""
    with PowerLossMount(tmp_path / "fs") as mount:
        yield mount
