"""The crash harness itself: it kills at the handshake, never waits forever, and its scoring
catches each kind of violation (so a green crash test means something)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from .harness import HarnessError, run_killable, score
from .workload import consumer_line, digest, payload, producer_line, put_order

ORDER = put_order(10, 0.0, seed=1)  # ops 0..9 put events 0..9


def write_logs(tmp_path: Path, produced: list[bytes], consumed: list[bytes]) -> Path:
    (tmp_path / "produced.log").write_bytes(b"".join(produced))
    (tmp_path / "consumed.log").write_bytes(b"".join(consumed))
    return tmp_path


def put(*ops: int) -> list[bytes]:
    return [producer_line(op, ORDER[op], "accepted") for op in ops]


def handled(event_id: int, row: int | None = None, attempts: int = 1) -> bytes:
    row = event_id + 100 if row is None else row
    return consumer_line(event_id, row, attempts, digest(payload(event_id)))


def test_clean_logs_score_clean(tmp_path: Path) -> None:
    logs = write_logs(tmp_path, put(0, 1, 2), [handled(0), handled(1), handled(2)])
    result = score(logs, ORDER, 3)
    assert result.ok and (result.acknowledged, result.delivered, result.duplicated) == (3, 3, 0)


def test_acknowledged_but_never_delivered_is_lost(tmp_path: Path) -> None:
    result = score(write_logs(tmp_path, put(0, 1), [handled(0)]), ORDER, 2)
    assert result.lost == [1] and not result.ok


def test_delivered_but_never_put_or_other_content_is_unexpected(tmp_path: Path) -> None:
    other = consumer_line(1, 101, 1, digest({"something": "else"}))
    result = score(write_logs(tmp_path, put(0, 1), [handled(0), other, handled(7)]), ORDER, 2)
    assert len(result.unexpected) == 2 and not result.ok


def test_redelivery_with_attempts_above_one_is_a_permitted_duplicate(tmp_path: Path) -> None:
    result = score(write_logs(tmp_path, put(0), [handled(0), handled(0, attempts=2)]), ORDER, 1)
    assert result.ok and result.duplicated == 1


@pytest.mark.parametrize(
    "second", [handled(0, attempts=1), handled(0, row=555, attempts=2)], ids=["attempt", "row"]
)
def test_duplicate_not_explained_by_attempts_fails(tmp_path: Path, second: bytes) -> None:
    result = score(write_logs(tmp_path, put(0), [handled(0), second]), ORDER, 1)
    assert len(result.bad_duplicates) == 1 and not result.ok


def test_a_line_cut_off_by_the_kill_is_ignored(tmp_path: Path) -> None:
    logs = write_logs(tmp_path, [*put(0), b"1 1 acc"], [handled(0), b"1 101"])
    result = score(logs, ORDER, 2)
    assert result.ok and result.acknowledged == 1 and result.deliveries == 1


def test_process_is_killed_at_its_handshake() -> None:
    code = (
        "import sys, time\n"
        "sys.stderr.write('EVENTQUEUE_CRASH_POINT mid_spill\\n'); sys.stderr.flush()\n"
        "time.sleep(600)\n"
    )
    outcome = run_killable(["-c", code], timeout_s=60)
    assert outcome.crashed_at == "mid_spill"
    assert outcome.returncode == -signal.SIGKILL
    assert outcome.seconds < 60


def test_process_that_exits_by_itself_is_reported_as_not_crashed() -> None:
    outcome = run_killable(["-c", "print('done')"], crash_at="after_commit", timeout_s=60)
    assert (outcome.crashed_at, outcome.returncode, outcome.stdout) == (None, 0, "done\n")


def test_a_hung_process_fails_the_run_instead_of_hanging_it() -> None:
    with pytest.raises(HarnessError, match="neither reached its crash point nor exited"):
        run_killable(["-c", "import time; time.sleep(600)"], timeout_s=1.0)


def test_the_crash_variable_reaches_eventqueue_in_the_child() -> None:
    code = "from eventqueue.core.faults import crash_point; crash_point('after_claim'); print('passed')"
    outcome = run_killable(["-c", code], crash_at="after_claim", timeout_s=60)
    assert outcome.crashed_at == "after_claim"
    unset = run_killable(["-c", code], timeout_s=60)
    assert (unset.crashed_at, unset.stdout) == (None, "passed\n")
