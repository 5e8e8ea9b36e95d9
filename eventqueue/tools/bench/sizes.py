"""How much work each scenario does: the full run, `--quick` and the hidden `--tiny`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does in one mode; every wait is bounded."""

    mode: str
    put_events: int
    backlogs: tuple[tuple[str, int], ...]
    claim_events: int  # events claimed + acked per variant and backlog ...
    claim_seconds: float  # ... or at most this long
    memory_checkpoints: tuple[int, int]  # end_to_end runs this many events (the last)
    e2e_limit_s: float  # ... or stops after this long
    latency_backlog: int
    latency_seconds: float
    spill_events: int
    limit_s: float  # any other wait still going after this is given up


FULL = Sizes(
    mode="full",
    put_events=50_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 20_000), ("claim_ack_1m", 1_000_000)),
    claim_events=2_000,
    claim_seconds=6.0,
    memory_checkpoints=(100_000, 1_000_000),
    e2e_limit_s=330.0,
    latency_backlog=20_000,
    latency_seconds=15.0,
    spill_events=50_000,
    limit_s=60.0,
)
QUICK = Sizes(
    mode="quick",
    put_events=5_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 20_000)),
    claim_events=1_000,
    claim_seconds=2.0,
    memory_checkpoints=(20_000, 100_000),
    e2e_limit_s=40.0,
    latency_backlog=5_000,
    latency_seconds=3.0,
    spill_events=5_000,
    limit_s=15.0,
)
TINY = Sizes(  # hidden `--tiny`: every code path in a few seconds
    mode="tiny",
    put_events=1_000,
    backlogs=(("claim_ack_2k", 2_000), ("claim_ack_20k", 5_000)),
    claim_events=300,
    claim_seconds=1.0,
    memory_checkpoints=(1_000, 3_000),
    e2e_limit_s=15.0,
    latency_backlog=1_000,
    latency_seconds=1.0,
    spill_events=1_000,
    limit_s=10.0,
)


def sizes(*, quick: bool = False, tiny: bool = False) -> Sizes:
    """The sizes of a mode: full (default), --quick, or the hidden --tiny."""
    return TINY if tiny else QUICK if quick else FULL
