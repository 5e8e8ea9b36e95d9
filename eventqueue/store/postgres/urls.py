"""What a PostgreSQL URL says: the DSN the driver reads, and the schema it selects. Pure.

Two ways to put eventqueue in a schema of its own:
- `?schema=NAME`, eventqueue's short form, read by every eventqueue entry point (the queue, the
  CLI, migrations). It is turned into libpq's form before a driver sees the URL.
- `?options=-csearch_path%3DNAME`, libpq's own form, which psql and pg_dump read too; passed
  through unchanged.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from eventqueue.core.errors import ConfigError

SCHEMA_PARAMETER = "schema"
# Unquoted PostgreSQL identifiers, lower case only: search_path folds an unquoted name to lower
# case, so "MySchema" would silently reach "myschema"; 63 bytes is the server's limit.
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^,\s]+)")


def driver_dsn(dsn: str) -> str:
    """The URL as asyncpg (and libpq) read it: postgresql://, `schema=NAME` as libpq options."""
    url = "postgresql://" + dsn.split("://", 1)[1]
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = _schema_parameter(query, url)
    if schema is None:
        return url
    rest = [(k, v) for k, v in query if k != SCHEMA_PARAMETER]
    choose = f"-csearch_path={schema}"
    if any(k == "options" for k, _ in rest):
        # Other libpq options stay; the schema joins them (options are space-separated).
        rest = [(k, f"{v} {choose}" if k == "options" else v) for k, v in rest]
    else:
        rest.append(("options", choose))
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))


def url_schema(dsn: str) -> str | None:
    """The schema the URL selects (`schema=` or libpq's search_path option), or None."""
    query = parse_qsl(urlsplit(dsn).query, keep_blank_values=True)
    schema = _schema_parameter(query, dsn)
    if schema is not None:
        return schema
    options = " ".join(v for k, v in query if k == "options")
    found = _SEARCH_PATH.search(options)
    return found[1] if found else None


def with_schema_parameter(dsn: str) -> str:
    """The URL naming its schema as `?schema=NAME` (the form to show people), when it names a
    plain schema through libpq's options and has no other options; else unchanged."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [v for k, v in query if k == "options"]
    schema = url_schema(dsn)
    if len(options) != 1 or schema is None or options[0] != f"-csearch_path={schema}":
        return dsn
    rest = [(k, v) for k, v in query if k != "options"] + [(SCHEMA_PARAMETER, schema)]
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))


def _schema_parameter(query: list[tuple[str, str]], url: str) -> str | None:
    """The checked value of `schema=`, or None when the URL has none."""
    given = [v for k, v in query if k == SCHEMA_PARAMETER]
    if not given:
        return None
    if len(given) > 1:
        raise ConfigError(f"{display_name(url)}: give schema= once, not {len(given)} times")
    if any(k == "options" and _SEARCH_PATH.search(v) for k, v in query):
        raise ConfigError(
            f"{display_name(url)}: the schema is named twice (schema= and options=-csearch_path=...); "
            "keep one of them"
        )
    name = given[0]
    if not _SCHEMA_NAME.fullmatch(name):
        raise ConfigError(
            f"{display_name(url)}: schema={name!r} is not a schema name eventqueue accepts: lower-case "
            "letters, digits and _, starting with a letter or _, at most 63 characters (for any "
            "other name use libpq's options=-csearch_path%3D...)"
        )
    return name


def display_name(dsn: str) -> str:
    """The URL without its password, for messages and `Store.name`."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
