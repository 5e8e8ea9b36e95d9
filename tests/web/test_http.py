"""`eventqueue web` over HTTP (issue 25), on both backends: a real server on 127.0.0.1 started
as `eventqueue web`, read with httpx; the database checked through the CLI's own reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from eventqueue.core.config import Config
from eventqueue.tools.inspector import Inspector
from tests.web.conftest import DEAD_ERROR, Database, Served

Web = Callable[..., Served]


def cli(db: Database, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventqueue", *args, "--db", db.location],
        capture_output=True,
        text=True,
        env=db.env,
        timeout=120,
    )


def stats_json(db: Database) -> dict[str, Any]:
    done = cli(db, "stats", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def dead_ids(db: Database) -> list[int]:
    return [d["id"] for d in Inspector(Config.load(db_path=db.location)).dead(limit=100)]


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found[1]


def without_ages(stats: dict[str, Any]) -> dict[str, Any]:
    """The parts of `stats` that do not move with the clock between two reads."""
    return {k: v for k, v in stats.items() if k not in ("oldest_pending_age_s", "spill")}


def test_overview_numbers_equal_stats_json(busy_db: Database, web: Web) -> None:
    served = web(busy_db)

    page = httpx.get(served.url)
    api = httpx.get(served.url + "api/overview").json()

    expected = stats_json(busy_db)
    assert without_ages(api["stats"]) == without_ages(expected)
    for status, by_priority in expected["counts"].items():
        for priority, count in by_priority.items():
            cell = re.search(rf'data-field="stats\.counts\.{status}\.{priority}">(\d+)<', page.text)
            assert cell and int(cell[1]) == count, (status, priority)
    assert api["totals"]["dead"] == sum(expected["counts"]["dead"].values()) > 0
    assert {k["key"] for k in api["keys"]} >= {"job_1-handler", "job_2-handler"}
    assert api["history"], "the overview's reading is a chart point"


def test_a_reading_is_a_chart_point(busy_db: Database, web: Web) -> None:
    served = web(busy_db)

    first = httpx.get(served.url + "api/overview").json()

    [point] = first["history"]  # rates need two readings (tests/unit/test_web_queries.py)
    assert point["pending"] == first["totals"]["pending"] > 0
    assert point["p50_s"] is not None  # one event was acked just now
    assert first["rates"] == {"accepted_per_s": None, "handled_per_s": None}


def test_dead_letter_found_opened_and_requeued_with_actions_on(busy_db: Database, web: Web) -> None:
    served = web(busy_db, "--allow-actions")
    [dead_id, *_] = dead_ids(busy_db)

    groups = httpx.get(served.url + "dead")
    assert DEAD_ERROR in groups.text
    group = httpx.get(served.url + "dead", params={"error": DEAD_ERROR})
    assert f'href="{served.url}events/{dead_id}"' in group.text
    event = httpx.get(f"{served.url}events/{dead_id}")
    assert "dead" in event.text and DEAD_ERROR in event.text and "job_" in event.text

    form = {"csrf": csrf_of(event.text), "ids": str(dead_id)}
    confirm = httpx.post(served.url + "dead/requeue", data=form)
    assert confirm.status_code == 200 and "This will requeue 1 dead event" in confirm.text
    assert dead_id in dead_ids(busy_db), "nothing changes before the confirmation"

    done = httpx.post(served.url + "dead/requeue", data={**form, "confirm": "yes"})
    assert done.status_code == 200 and "requeued 1 dead event(s)" in done.text
    assert dead_id not in dead_ids(busy_db)
    info = Inspector(Config.load(db_path=busy_db.location)).show(dead_id)
    assert info is not None and info["status"] == "pending"


def test_a_whole_error_group_is_requeued(busy_db: Database, web: Web) -> None:
    served = web(busy_db, "--allow-actions")
    before = dead_ids(busy_db)
    csrf = csrf_of(httpx.get(served.url + "dead").text)

    form = {"csrf": csrf, "error": DEAD_ERROR, "confirm": "yes"}
    done = httpx.post(served.url + "dead/requeue", data=form)

    assert done.status_code == 200 and f"requeued {len(before)} dead event(s)" in done.text
    assert dead_ids(busy_db) == []


def test_actions_are_refused_when_off_and_without_csrf(busy_db: Database, web: Web) -> None:
    read_only = web(busy_db)
    acting = web(busy_db, "--allow-actions")
    before = dead_ids(busy_db)
    page = httpx.get(read_only.url + "dead")
    assert "Requeue" not in page.text and "--allow-actions" in page.text

    form = {"ids": str(before[0]), "confirm": "yes"}
    off = httpx.post(read_only.url + "dead/requeue", data={**form, "csrf": "x"})
    forged = httpx.post(acting.url + "dead/requeue", data={**form, "csrf": "forged"})
    missing = httpx.post(acting.url + "dead/requeue", data=form)

    assert off.status_code == 403 and "actions are off" in off.text
    assert forged.status_code == missing.status_code == 403
    assert "CSRF" in forged.text
    assert dead_ids(busy_db) == before


def test_sql_page_runs_a_read_and_refuses_a_write(busy_db: Database, web: Web) -> None:
    served = web(busy_db)
    before = stats_json(busy_db)["counts"]

    read = httpx.get(served.url + "sql", params={"q": "select count(*) from events"})
    write = httpx.get(served.url + "sql", params={"q": "delete from events"})
    sneaky = httpx.get(
        served.url + "sql", params={"q": "with x as (delete from events returning id) select 1"}
    )

    assert read.status_code == 200 and "<td>41</td>" in read.text  # 42 puts, one duplicate
    assert write.status_code == 400 and "refused" in write.text
    assert sneaky.status_code == 400
    assert stats_json(busy_db)["counts"] == before


def test_events_filter_and_find(busy_db: Database, web: Web) -> None:
    served = web(busy_db)
    [dead_id, *_] = dead_ids(busy_db)
    info = Inspector(Config.load(db_path=busy_db.location)).show(dead_id)
    assert info is not None

    dead = httpx.get(served.url + "events", params={"status": "dead"})
    critical = httpx.get(served.url + "events", params={"priority": "CRITICAL"})
    by_aggregate = httpx.get(served.url + "events", params={"aggregate": "agg-7"})
    by_hash = httpx.get(served.url + "events", params={"find": info["content_hash"]})
    by_event_id = httpx.get(served.url + "events", params={"find": info["payload"]["event_id"]})
    by_id = httpx.get(served.url + "events", params={"find": str(dead_id)})
    bad = httpx.get(served.url + "events", params={"status": "lost"})
    bad_priority = httpx.get(served.url + "events", params={"priority": "URGENT"})

    assert dead.text.count('class="status dead"') == len(dead_ids(busy_db))
    assert critical.text.count("<td>CRITICAL</td>") == 1
    assert by_aggregate.text.count("<td>agg-7</td>") == 1
    for found in (by_hash, by_event_id, by_id):
        assert found.status_code == 303
        assert found.headers["location"].endswith(f"/events/{dead_id}")
    assert bad.status_code == 400 and "lost" in bad.text
    assert bad_priority.status_code == 400 and "bad priority &#39;URGENT&#39;" in bad_priority.text


def test_event_pages_go_back_by_id(busy_db: Database, web: Web) -> None:
    served = web(busy_db)

    newest = httpx.get(served.url + "events")
    older = httpx.get(served.url + "events", params={"before": "5"})

    assert newest.text.count('class="status ') == 41 and 'id="older"' not in newest.text
    assert re.findall(r'href="[^"]*/events/(\d+)"', older.text) == ["4", "3", "2", "1"]
    assert "Ids 1 to 4 searched" in older.text


def test_token_is_checked_on_every_request(busy_db: Database, web: Web) -> None:
    token = "a-long-enough-secret-token"
    served = web(busy_db, "--token", token)

    assert httpx.get(served.url).status_code == 401
    assert httpx.get(served.url + "api/overview").status_code == 401
    bearer = httpx.get(served.url, headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 200
    with httpx.Client() as browser:
        first = browser.get(served.url, params={"token": token})
        assert first.status_code == 200 and "eventqueue_token" in browser.cookies
        assert browser.get(served.url + "dead").status_code == 200  # by the cookie


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_a_public_host_needs_a_token(busy_db: Database, host: str) -> None:
    done = cli(busy_db, "web", "--host", host, "--port", "0")

    assert done.returncode == 2
    assert f"refusing to serve the dashboard on {host} without a token" in done.stderr
