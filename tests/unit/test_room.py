"""Room: when a put counts the waiting events exactly, and the estimate in between."""

from __future__ import annotations

import pytest

from eventqueue.runtime.wakeup import RECOUNT_AFTER_S, Room

NOW = 1_700_000_000.0


def test_the_first_put_counts() -> None:
    assert Room(1000).worth_counting(1, NOW)


def test_plentiful_room_is_recounted_only_after_a_while() -> None:
    room = Room(1000)
    room.committed(100, 10, NOW)

    assert not room.worth_counting(10, NOW + RECOUNT_AFTER_S / 2)
    assert room.worth_counting(10, NOW + 2 * RECOUNT_AFTER_S)
    assert room.worth_counting(10, NOW - 1.0)  # the clock stepped back: count


def test_a_put_that_could_leave_less_than_half_free_counts() -> None:
    room = Room(1000)
    room.committed(400, 0, NOW)

    assert not room.worth_counting(99, NOW)
    assert room.worth_counting(100, NOW)  # 1000 - 400 - 100 = 500: half left


def test_without_a_count_the_estimate_grows_by_what_was_accepted() -> None:
    room = Room(1000)
    room.committed(100, 0, NOW)
    room.committed(None, 7, NOW + 1)

    assert room.waiting == 107
    assert room.counted_at == NOW  # still the last count
    room.taken(10)  # claimed: they no longer wait
    assert room.waiting == 97
    room.returned(3)  # nacked for a retry or released: they wait again
    assert room.waiting == 100
    room.taken(1000)
    assert room.waiting == 0  # never below empty


def test_an_idle_consumer_wakes_for_the_shorter_high_window() -> None:
    from eventqueue.core.config import Config
    from eventqueue.core.records import Wakeup
    from eventqueue.runtime.wakeup import idle_delay

    config = Config(batch_window_ms=100, high_batch_window_ms=25, poll_ms=1000)
    normal_only = Wakeup(1000.0, None, None)
    with_high = Wakeup(1000.0, None, None, oldest_high_pending_at=1000.0)

    assert idle_delay(normal_only, config, now=1000.0) == pytest.approx(0.1)
    assert idle_delay(with_high, config, now=1000.0) == pytest.approx(0.025)
