"""The one place eventqueue relies on aiosqlite internals: `Connection._execute(fn, *args)` runs
`fn` on the connection's own worker thread, where its sqlite3 connection lives. A whole
transaction is handed over as one function (one thread hop); if an aiosqlite release changed
this contract, these tests fail first."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import aiosqlite

from eventqueue.store.sqlite.connection import Tx, on_connection_thread


async def test_a_function_runs_on_the_connection_thread_with_its_sqlite3_connection(
    tmp_path: Path,
) -> None:
    db = await aiosqlite.connect(tmp_path / "t.db", isolation_level=None)
    try:
        loop_thread = threading.get_ident()

        def where(connection: sqlite3.Connection) -> tuple[int, bool]:
            return threading.get_ident(), isinstance(connection, sqlite3.Connection)

        first, is_sqlite3 = await on_connection_thread(db, where)
        second, _ = await on_connection_thread(db, where)
        assert is_sqlite3 and first == second != loop_thread
    finally:
        await db.close()


async def test_a_transaction_in_one_hop_sees_its_own_writes_and_commits(tmp_path: Path) -> None:
    db = await aiosqlite.connect(tmp_path / "t.db", isolation_level=None)
    try:

        def body(connection: sqlite3.Connection) -> int:
            tx = Tx(connection)
            tx.run("BEGIN IMMEDIATE")
            tx.run("CREATE TABLE t (x)")
            tx.many("INSERT INTO t VALUES (?)", [(1,), (2,)])
            total = int(tx.scalar("SELECT sum(x) FROM t"))
            tx.run("COMMIT")
            return total

        assert await on_connection_thread(db, body) == 3
        assert not db.in_transaction
        rows = await db.execute_fetchall("SELECT x FROM t ORDER BY x")
        assert [r[0] for r in rows] == [1, 2]
    finally:
        await db.close()
