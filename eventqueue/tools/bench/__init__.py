"""`eventqueue bench`: throughput and latency of the queue against raw sqlite3, as figures.

Every scenario runs in this one process on fresh database files in a temporary directory, and
(where one exists) against a raw `sqlite3` baseline doing the same work on the same schema with
the same PRAGMAs (sqlite_baseline.py). Sizes are fixed per mode and every wait is bounded, so a
run always stops by itself. Speed is reported here and never asserted by tests.

Scenarios (the JSON `scenario` names, in the order printed):
- put / put_many: 16 producers keeping 64 `put`s in flight each (or one `put_many` of 100
  each), events of ~300 bytes, 4 priorities, 20 % duplicates, room for all of them below
  EVENT_QUEUE_SIZE. Baseline: json + sha256 + INSERT OR IGNORE in group commits of 100.
- claim_ack_2k / _20k / _1m: claim + ack batches of MAX_BATCH_SIZE at a backlog of that many
  pending events (1m: full run only), as `q.claim()` + `q.ack()` and fused as
  `q.claim(ack=previous)`. Baseline: UPDATE … RETURNING (commit), then ack (commit).
- end_to_end: source → Dispatcher → no-op handlers, default settings.
- critical_latency: CRITICAL put-to-handler-start p50/p99 with NORMAL events arriving at
  5,000/s on top of a backlog (critical_latency_busy: with every other consumer in a slow
  handler; critical_latency_saturated: with the source offering 1.5x end_to_end's rate).
- spill_put / promote: puts past a small EVENT_QUEUE_SIZE (spilled to disk), then promotion
  back into the table; "not available" for a queue without spill.
- memory: RSS at two checkpoints of the end_to_end run (events processed), and peak RSS.
With `--db postgresql://...` the same scenarios run on that server, each database in a
scratch schema `eqbench_<random>` dropped when its scenario ends (places.py), against raw asyncpg
(store/postgres/baseline.py, reached through `eventqueue.store.raw_tools`): put as one-row
transactions and as inserts of 100 rows, claim + ack as FOR UPDATE SKIP LOCKED then ack in
batches of MAX_BATCH_SIZE. PRAGMA fields say "n/a" there; `settings.server` holds the server's
durability settings. Every row says its `backend`.
Variants are measured in alternating rounds, each after an (untimed) sync of the page cache,
so a slow moment of the disk or a busy neighbour falls on the queue and the baseline alike.

The package: sizes.py (the modes), workload.py (the events), harness.py, measure.py and rows.py
(shared steps), places.py (files or scratch schemas), scenarios/ (one module per scenario),
runner.py (the run), report.py (the table and the JSON), sqlite_baseline.py (the raw sqlite3
side; stdlib only, so it stays here rather than in store/).
"""

from eventqueue.tools.bench.report import report
from eventqueue.tools.bench.rows import Row
from eventqueue.tools.bench.runner import ROW_ORDER, STEPS, run
from eventqueue.tools.bench.sizes import FULL, QUICK, TINY, Sizes, sizes

__all__ = ["FULL", "QUICK", "ROW_ORDER", "STEPS", "TINY", "Row", "Sizes", "report", "run", "sizes"]
