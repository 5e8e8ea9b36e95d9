"""The rule that says a lease owner is gone (core/owners.py), with a given process probe."""

from __future__ import annotations

from eventqueue.core.owners import STALE_HEARTBEATS, Owner, describe, is_gone

SPACE = "boot-1/pid:[4026531836]"
START = 1_700_000_000.0


def owner(*, space: str = SPACE, start: int | None = 500, beat: float = START) -> Owner:
    return Owner("h/42/ab", "h", 42, space, start, START, beat, 5.0, leases=3)


def running(pid: int) -> int | None:
    return {42: 500}.get(pid)  # pid 42 runs, started at tick 500


def test_in_the_same_pid_space_the_process_decides_whatever_the_heartbeat() -> None:
    long_silent = START + 3600
    assert not is_gone(owner(), pid_space=SPACE, now=long_silent, process_start=running)
    assert is_gone(
        owner(start=501), pid_space=SPACE, now=START, process_start=running
    )  # pid reused
    assert is_gone(owner(), pid_space=SPACE, now=START, process_start=lambda pid: None)


def test_elsewhere_the_heartbeat_decides_after_three_periods() -> None:
    other = owner(space="boot-2/pid:[1]")
    limit = START + STALE_HEARTBEATS * 5.0
    assert not is_gone(other, pid_space=SPACE, now=limit, process_start=lambda pid: None)
    assert is_gone(other, pid_space=SPACE, now=limit + 0.001, process_start=running)


def test_without_a_start_time_or_a_pid_space_only_the_heartbeat_tells() -> None:
    late = START + STALE_HEARTBEATS * 5.0 + 1
    assert is_gone(owner(start=None), pid_space=SPACE, now=late, process_start=running)
    assert is_gone(owner(space=""), pid_space="", now=late, process_start=running)


def test_a_heartbeat_in_the_future_is_alive() -> None:
    ahead = owner(space="elsewhere", beat=START + 3600)  # the judge's clock stepped back
    assert not is_gone(ahead, pid_space=SPACE, now=START, process_start=running)


def test_describe_gives_the_stats_shape() -> None:
    assert describe(owner(), START + 2.5) == {
        "owner": "h/42/ab",
        "host": "h",
        "pid": 42,
        "started_at": "2023-11-14T22:13:20.000+00:00",
        "heartbeat_age_s": 2.5,
        "leases": 3,
    }
