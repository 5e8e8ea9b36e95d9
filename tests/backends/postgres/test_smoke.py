"""The backend end to end through EventQueue: put, claim, ack on a fresh schema."""

from __future__ import annotations

from pathlib import Path

from eventqueue import EventQueue


async def test_put_claim_ack(pg_db: str, tmp_path: Path) -> None:
    async with EventQueue.open(pg_db, spill_dir=str(tmp_path / "spill")) as q:
        first = await q.put({"event_type": "e", "event_name": "thing_error", "aggregate_id": 1})
        again = await q.put({"event_type": "e", "event_name": "thing_error", "aggregate_id": 1})
        assert first.accepted and again.duplicate and again.id == first.id
        batch = await q.claim()
        assert batch is not None and batch.ids == [first.id]
        await q.ack(batch)
        stats = await q.stats()
        assert stats.count("done") == 1 and stats.duplicates_suppressed == 1
