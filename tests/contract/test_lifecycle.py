"""Open, close, reopen, housekeeping: what every backend's lifecycle promises."""

from __future__ import annotations

from contract.conftest import START, OpenStore, claim_one, make_event, many, put
from eventqueue.store.base import Capabilities, Store


async def test_a_store_names_its_database_and_reports_its_capabilities(store: Store) -> None:
    assert isinstance(store.name, str) and store.name
    assert isinstance(store.capabilities, Capabilities)


async def test_close_is_idempotent(store: Store) -> None:
    await store.close()
    await store.close()


async def test_events_survive_close_and_reopen(store: Store, open_another: OpenStore) -> None:
    ids = await put(store, many("job", 3))
    await store.close()
    reopened = await open_another()

    batch = await claim_one(reopened)

    assert batch.ids == ids
    assert (await reopened.waiting_count(), await reopened.unfinished_count()) == (0, 3)


async def test_two_stores_on_one_database_see_each_others_commits(
    store: Store, open_another: OpenStore
) -> None:
    other = await open_another()
    (event_id,) = await put(store, [make_event()])

    batch = await claim_one(other)
    await other.ack(batch.token, batch.ids, now=START)

    info = await store.show(event_id)
    assert info is not None and info["status"] == "done"


async def test_maintain_changes_no_data(store: Store) -> None:
    ids = await put(store, many("job", 2))
    before = [await store.show(i) for i in ids]

    await store.maintain()

    assert [await store.show(i) for i in ids] == before
