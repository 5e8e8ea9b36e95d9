"""The layers, checked: tools -> runtime -> store -> core, imports only downward.

Every import statement of the package (module level and inside functions) is read with `ast`;
a new upward import, or a database driver imported outside store/, fails here (and in CI).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "eventqueue"
LAYERS = ("core", "store", "runtime", "tools")  # each may import those before it, and itself
# The runtime talks to the store interface only: never to a backend's own modules.
BACKEND_PACKAGES = ("eventqueue.store.sqlite", "eventqueue.store.postgres")
DRIVERS = ("sqlalchemy", "aiosqlite", "alembic", "asyncpg", "psycopg")
# Top-level modules: the package's public import paths, which only re-export from the layers.
FACADES = ("__init__.py", "__main__.py", "sources.py")


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_migrations" not in p.parts)


def layer_of(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 and parts[0] in LAYERS else None


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            # `from eventqueue.store import sqlite` names a module too.
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def target_layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "eventqueue" and parts[1] in LAYERS else None


def violations(path: Path) -> list[str]:
    layer = layer_of(path)
    where = path.relative_to(PACKAGE.parent)
    found = []
    for line, name in imported_names(path):
        if name.split(".")[0] in DRIVERS and layer != "store":
            found.append(f"{where}:{line} imports the driver {name} outside store/")
        target = target_layer(name)
        if layer is None or target is None:
            continue
        if LAYERS.index(target) > LAYERS.index(layer):
            found.append(f"{where}:{line} ({layer}) imports {name} from the higher layer {target}")
        if layer == "runtime" and name.startswith(BACKEND_PACKAGES):
            found.append(f"{where}:{line} (runtime) imports the backend module {name}")
    return found


def test_every_module_belongs_to_a_layer() -> None:
    stray = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if layer_of(p) is None and p.name not in FACADES
    ]
    assert stray == [], f"modules outside core/, store/, runtime/, tools/: {stray}"


def test_imports_only_go_down_the_layers() -> None:
    problems = [problem for path in modules() for problem in violations(path)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("layer", "source", "complaint"),
    [
        ("core", "from eventqueue.runtime.queue import EventQueue", "higher layer runtime"),
        ("store", "import eventqueue.tools.cli", "higher layer tools"),
        ("runtime", "from eventqueue.store.sqlite.store import SQLiteStore", "backend module"),
        ("runtime", "from eventqueue.store import sqlite", "backend module"),
        ("tools", "import sqlalchemy", "driver sqlalchemy outside store/"),
        ("runtime", "def f():\n    import aiosqlite\n", "driver aiosqlite outside store/"),
    ],
)
def test_the_check_catches_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layer: str, source: str, complaint: str
) -> None:
    package = tmp_path / "eventqueue"
    (package / layer).mkdir(parents=True)
    module = package / layer / "bad.py"
    module.write_text(source + "\n", encoding="utf-8")
    monkeypatch.setitem(globals(), "PACKAGE", package)
    assert any(complaint in problem for problem in violations(module))
