"""Several hosts on one PostgreSQL database, killed at handshakes: 3 producer and 3 consumer
processes (fresh interpreters, each with its own spill folder and logs), some SIGKILLed at the
crash points eventqueue reports, then restarted to finish. Scored as RELIABILITY.md says:
lost 0, unexpected 0, a repeated delivery only with attempts > 1 on one stored row; afterwards
nothing pending, claimed, dead or spilled."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pgtest import execute, run_sync
from reliability.harness import BASE_SETTINGS, Outcome, run_killable, score
from reliability.workload import put_order

from eventqueue.runtime.overflow.folders import read_identity
from eventqueue.runtime.overflow.log import SpillPosition, inspect

WORKER = Path(__file__).with_name("multihost_worker.py")
UNIQUE = 600
PRODUCERS = CONSUMERS = 3
TIMEOUT_S = 90.0


def test_three_producers_and_three_consumers_killed_and_restarted(
    pg_db: str, tmp_path: Path
) -> None:
    rng = random.Random(12)
    done = tmp_path / "producers.done"
    settings = {**BASE_SETTINGS, "EVENT_DB_PATH": pg_db, "EVENT_QUEUE_SIZE": "120"}
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def host(name: str, argv: list[str], crash_at: str | None, after: int) -> None:
        folder = tmp_path / name
        (folder / "logs").mkdir(parents=True)
        env = {**settings, "EVENT_SPILL_DIR": str(folder / "spill")}
        common = [str(WORKER), *argv, f"--db={pg_db}", f"--logs={folder / 'logs'}"]
        common.append(f"--unique={UNIQUE}")
        first = run_killable(
            common, settings=env, crash_at=crash_at, crash_after=after, timeout_s=TIMEOUT_S
        )
        runs = [first]
        if first.crashed_at is not None:  # the same host starts again and finishes its work
            runs.append(run_killable(common, settings=env, timeout_s=TIMEOUT_S))
        with lock:
            outcomes.extend(runs)
        last = runs[-1]
        assert last.crashed_at is None and last.returncode == 0, last.stderr[-3000:]

    producer_points = ["after_commit", "mid_spill", "mid_promotion"]
    producers: list[Callable[[], None]] = [
        lambda i=i: host(
            f"producer-{i}",
            ["producer", f"--part={i}", f"--parts={PRODUCERS}"],
            producer_points[i],
            rng.randint(2, 6),
        )
        for i in range(PRODUCERS)
    ]
    consumers: list[Callable[[], None]] = [
        lambda i=i: host(
            f"consumer-{i}",
            ["consumer", f"--done={done}"],
            "after_claim" if i < 2 else None,
            rng.randint(3, 10),
        )
        for i in range(CONSUMERS)
    ]
    with ThreadPoolExecutor(PRODUCERS + CONSUMERS) as pool:
        consuming = [pool.submit(c) for c in consumers]
        for producing in [pool.submit(p) for p in producers]:
            producing.result()
        done.touch()  # every producer finished: consumers may leave once nothing is left
        for future in consuming:
            future.result()

    merged = tmp_path / "merged"
    merged.mkdir()
    for log in ("produced.log", "consumed.log"):
        parts = sorted(tmp_path.glob(f"*/logs/{log}"))
        (merged / log).write_bytes(b"".join(p.read_bytes() for p in parts))
    order = put_order(UNIQUE, 0.05, 0)
    result = score(merged, order, len(order))
    assert not result.lost and not result.unexpected and not result.bad_duplicates, result.line()
    assert result.acknowledged == result.attempted == result.delivered, result.line()
    assert sum(o.crashed_at is not None for o in outcomes) >= 3, [o.crashed_at for o in outcomes]

    counts = dict(
        run_sync(lambda: execute(pg_db, "SELECT status, count(*) FROM events GROUP BY 1"))
    )
    assert set(counts) == {"done"}, counts
    saved = run_sync(
        lambda: execute(pg_db, 'SELECT log, priority, segment, "offset" FROM spill_positions')
    )
    positions: dict[str, dict[int, SpillPosition]] = {}
    for log_name, priority, segment, offset in saved:
        positions.setdefault(log_name, {})[priority] = SpillPosition(segment, offset)
    for folder in tmp_path.glob("*/spill"):
        stats = inspect(folder, positions.get(read_identity(str(folder), pg_db), {}))
        assert sum(stats.records.values()) == 0 and stats.quarantined_records == 0, folder
    print(result.line(), [o.crashed_at for o in outcomes], file=sys.stderr)
