"""save_settings / settings: the opener's settings, recorded for the views and the CLI."""

from __future__ import annotations

from contract.conftest import OpenStore
from eventqueue.store.base import Store


async def test_a_new_store_has_no_settings(store: Store) -> None:
    assert await store.settings() == {}


async def test_saved_settings_are_read_back(store: Store) -> None:
    await store.save_settings({"max_batch_size": "10", "enable_batching": "true"})

    assert await store.settings() == {"max_batch_size": "10", "enable_batching": "true"}


async def test_saving_again_replaces_values_and_keeps_the_others(store: Store) -> None:
    await store.save_settings({"max_batch_size": "10", "aging_s": "60.0"})

    await store.save_settings({"max_batch_size": "25"})

    assert await store.settings() == {"max_batch_size": "25", "aging_s": "60.0"}


async def test_settings_survive_close_and_reopen(store: Store, open_another: OpenStore) -> None:
    await store.save_settings({"queue_size": "1000"})
    await store.close()

    assert await (await open_another()).settings() == {"queue_size": "1000"}
