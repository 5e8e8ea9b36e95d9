"""What an alembic script folder knows of revisions: the same questions for both backends, each
asked of its own folder (store/sqlite/migrations.py, store/postgres/migrator.py)."""

from __future__ import annotations

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from eventqueue.core.errors import SchemaError


def head_revision(config: AlembicConfig, scripts: str) -> str:
    """The newest revision of the folder `config` points at (`scripts` names it in errors)."""
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise SchemaError(f"{scripts} have no head revision")
    return head


def is_known_revision(config: AlembicConfig, revision: str) -> bool:
    """True when the folder has the revision (False: a newer eventqueue wrote it)."""
    try:
        return ScriptDirectory.from_config(config).get_revision(revision) is not None
    except CommandError:
        return False
