"""How the SQLite store splits a put into INSERT statements: few sizes, each row once."""

from __future__ import annotations

from eventqueue.store.sqlite.bodies import MAX_ROWS_PER_INSERT, put_statement, statement_sizes
from eventqueue.store.sqlite.queries import PUT_COLUMNS


def test_every_put_size_is_covered_exactly_by_few_statement_sizes() -> None:
    seen: set[int] = set()
    for rows in range(0, 2_000):
        sizes = statement_sizes(rows)
        assert sum(sizes) == rows
        assert all(0 < size <= MAX_ROWS_PER_INSERT for size in sizes)
        assert sizes == sorted(sizes, reverse=True)
        seen.update(sizes)
    assert seen == {1, 2, 4, 8, 16, 32, 64}  # 7 statements per dedup mode, compiled once


def test_a_hundred_rows_take_three_statements() -> None:
    assert statement_sizes(100) == [64, 32, 4]


def test_each_statement_binds_its_rows_by_position() -> None:
    for size in (1, 2, 64):
        for dedup in (True, False):
            statement = put_statement(size, dedup)  # raises if not row after row
            assert statement.sql.count("?") == size * len(PUT_COLUMNS)
