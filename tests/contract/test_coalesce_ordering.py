"""Coalescing with ordering (issues 22 and 23), on every backend: a put folds only into the
last unfinished event of its ordering group (held behind the group's head is fine: it keeps its
place), never into an earlier event when a later event of the group exists, nor across groups;
inside one put as across puts. Each group is drained in order to show nothing was reordered."""

from __future__ import annotations

import dataclasses
from typing import Any

from contract.conftest import START, claim, status_of
from contract.test_coalesce import READY, put, version
from eventqueue.core.models import PutStatus
from eventqueue.core.records import NewEvent
from eventqueue.store.base import Store


def grouped(v: int, key: str = "o1", group: str | None = "g", **kwargs: Any) -> NewEvent:
    """Version `v` of order `key`, coalescing by the order, in ordering group `group`."""
    return dataclasses.replace(version(v, key=key, **kwargs), ordering_key=group)


async def delivered(store: Store) -> list[tuple[int, str | None, dict[str, Any], int]]:
    """Claim and ack one batch at a time until nothing is ready: (id, aggregate, attributes,
    superseded) of each event, in delivery order."""
    seen = []
    for n in range(100):
        batches = await claim(store, now=START + 1, rules=READY, token=f"t{n}")
        if not batches:
            return seen
        for batch in batches:
            seen += [
                (e.id, e.payload["aggregate_id"], e.payload["attributes"], e.superseded)
                for e in batch.events
            ]
            await store.ack(batch.token, batch.ids, now=START + 1)
    raise AssertionError("never drained")


async def test_a_version_folds_into_the_held_last_event_of_its_group(store: Store) -> None:
    ((_, head),) = await put(store, [grouped(1, key="o2")])
    ((_, last),) = await put(store, [grouped(1)])
    assert await status_of(store, last) == "held"

    outcome = await put(store, [grouped(2)], now=START + 0.5)

    assert outcome == [(PutStatus.ACCEPTED, last)]  # folded: same id, still held, same place
    assert await status_of(store, last) == "held"
    assert await delivered(store) == [(head, "o2", {"v": 1}, 0), (last, "o1", {"v": 2}, 1)]


async def test_a_version_never_folds_into_an_event_with_a_later_one_of_its_group(
    store: Store,
) -> None:
    ((_, first),) = await put(store, [grouped(1)])
    ((_, other),) = await put(store, [grouped(1, key="o2")])

    ((status, new),) = await put(store, [grouped(2)], now=START + 0.5)

    assert status is PutStatus.ACCEPTED and new not in (first, other)
    assert await delivered(store) == [
        (first, "o1", {"v": 1}, 0),
        (other, "o2", {"v": 1}, 0),
        (new, "o1", {"v": 2}, 0),
    ]


async def test_inside_one_put_a_version_folds_only_into_the_group_s_last(store: Store) -> None:
    outcome = await put(store, [grouped(1), grouped(1, key="o2"), grouped(2), grouped(3)])

    ids = [i for _, i in outcome]
    # v2 may not fold into v1 (o2 comes after it); v3 folds into v2, the group's last.
    assert len({ids[0], ids[1], ids[2]}) == 3 and ids[3] == ids[2]
    assert await delivered(store) == [
        (ids[0], "o1", {"v": 1}, 0),
        (ids[1], "o2", {"v": 1}, 0),
        (ids[2], "o1", {"v": 3}, 1),
    ]


async def test_a_version_of_another_group_is_not_folded(store: Store) -> None:
    ((_, first),) = await put(store, [grouped(1, group="g1")])

    outcome = await put(store, [grouped(2, group="g2"), grouped(3, group=None)], now=START + 0.5)

    ids = [i for _, i in outcome]
    assert len({first, *ids}) == 3
    assert sorted(e[2]["v"] for e in await delivered(store)) == [1, 2, 3]


async def test_once_the_later_event_is_done_the_last_one_takes_versions_again(
    store: Store,
) -> None:
    ((_, first),) = await put(store, [grouped(1, key="o2")])
    batches = await claim(store, now=START + 1, rules=READY, token="t")
    assert [b.ids for b in batches] == [[first]]
    ((_, last),) = await put(store, [grouped(1)])  # held behind the claimed head
    await store.ack(batches[0].token, batches[0].ids, now=START + 1)

    outcome = await put(store, [grouped(2)], now=START + 0.5)

    assert outcome == [(PutStatus.ACCEPTED, last)]
    assert await delivered(store) == [(last, "o1", {"v": 2}, 1)]
