"""Source positions and spill positions commit with the puts they travel with."""

from __future__ import annotations

from contract.conftest import START, OpenStore, make_event
from eventqueue.store.base import Store

TTL = 300.0


async def test_an_unknown_source_has_no_position(store: Store) -> None:
    assert await store.source_position("sse") is None


async def test_a_source_position_is_read_back_after_its_put(store: Store) -> None:
    await store.put([make_event()], now=START, dedup_ttl_s=TTL, source_positions={"sse": "42"})

    assert await store.source_position("sse") == "42"


async def test_a_later_put_moves_the_source_position(store: Store) -> None:
    await store.put([make_event(n=1)], now=START, dedup_ttl_s=TTL, source_positions={"sse": "1"})

    await store.put([make_event(n=2)], now=START, dedup_ttl_s=TTL, source_positions={"sse": "2"})

    assert await store.source_position("sse") == "2"


async def test_sources_keep_their_own_positions(store: Store) -> None:
    await store.put(
        [make_event()], now=START, dedup_ttl_s=TTL, source_positions={"a": "10", "b": "20"}
    )
    await store.put([make_event(n=2)], now=START, dedup_ttl_s=TTL, source_positions={"b": "21"})

    assert (await store.source_position("a"), await store.source_position("b")) == ("10", "21")


async def test_a_position_commits_even_when_every_event_was_a_duplicate(store: Store) -> None:
    await store.put([make_event()], now=START, dedup_ttl_s=TTL, source_positions={"sse": "1"})

    await store.put([make_event()], now=START, dedup_ttl_s=TTL, source_positions={"sse": "2"})

    assert await store.source_position("sse") == "2"


async def test_a_position_commits_with_no_events(store: Store) -> None:
    await store.put([], now=START, dedup_ttl_s=TTL, source_positions={"sse": "7"})

    assert await store.source_position("sse") == "7"


async def test_a_source_position_survives_close_and_reopen(
    store: Store, open_another: OpenStore
) -> None:
    await store.put([make_event()], now=START, dedup_ttl_s=TTL, source_positions={"sse": "42"})
    await store.close()

    assert await (await open_another()).source_position("sse") == "42"


async def test_an_unknown_spill_log_has_no_positions(store: Store) -> None:
    assert await store.spill_positions("host-a/events.spill") == {}


async def test_spill_positions_are_read_back_after_their_put(store: Store) -> None:
    await store.put(
        [make_event()],
        now=START,
        dedup_ttl_s=TTL,
        spill_positions=("host-a", {2: (0, 128), 1: (3, 0)}),
    )

    assert await store.spill_positions("host-a") == {2: (0, 128), 1: (3, 0)}


async def test_a_later_put_moves_only_the_priorities_it_names(store: Store) -> None:
    await store.put(
        [], now=START, dedup_ttl_s=TTL, spill_positions=("host-a", {2: (0, 128), 1: (3, 0)})
    )

    await store.put([], now=START, dedup_ttl_s=TTL, spill_positions=("host-a", {2: (1, 64)}))

    assert await store.spill_positions("host-a") == {2: (1, 64), 1: (3, 0)}


async def test_two_spill_logs_keep_their_own_positions(store: Store) -> None:
    await store.put([], now=START, dedup_ttl_s=TTL, spill_positions=("host-a", {2: (0, 128)}))
    await store.put([], now=START, dedup_ttl_s=TTL, spill_positions=("host-b", {2: (5, 8)}))

    assert await store.spill_positions("host-a") == {2: (0, 128)}
    assert await store.spill_positions("host-b") == {2: (5, 8)}


async def test_spill_positions_survive_close_and_reopen(
    store: Store, open_another: OpenStore
) -> None:
    await store.put([], now=START, dedup_ttl_s=TTL, spill_positions=("host-a", {4: (2, 512)}))
    await store.close()

    assert await (await open_another()).spill_positions("host-a") == {4: (2, 512)}
