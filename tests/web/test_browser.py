"""`eventqueue web` driven in a real headless Chromium (issue 25), as a person would use it.

Debian's `chromium` and `chromium-driver` (installed by .ci/run) through Selenium. Without them
the module skips with one line; under CI (env CI set) a missing browser fails instead. The
overview test saves docs/web-overview.png, the screenshot the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventqueue.core.config import Config
from eventqueue.tools.inspector import Inspector
from tests.web.conftest import DEAD_ERROR, Database, Served
from tests.web.test_http import dead_ids, stats_json, without_ages

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (
    "no Chromium for the browser tests: install Debian's chromium and chromium-driver "
    "(.ci/run does, as root)"
)
if not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"):
    pytest.skip(MISSING, allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only once a browser is known to be there)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

Web = Callable[..., Served]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "web-overview.png"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module, with a fresh profile."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail(f"CI: {MISSING}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def find(browser: webdriver.Chrome, by: str, what: str) -> WebElement:
    """The element once the page that has it has loaded (a click's navigation is not awaited)."""
    return WebDriverWait(browser, 20).until(lambda b: b.find_element(by, what))


def cell(browser: webdriver.Chrome, field: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text)


def test_overview_numbers_equal_stats_and_a_chart_has_points(
    busy_db: Database, web: Web, browser: webdriver.Chrome
) -> None:
    served = web(busy_db)
    browser.get(served.url)

    expected = stats_json(busy_db)
    for status, by_priority in expected["counts"].items():
        for priority, count in by_priority.items():
            assert cell(browser, f"stats.counts.{status}.{priority}") == str(count)
        assert cell(browser, f"totals.{status}") == str(sum(by_priority.values()))
    assert cell(browser, "stats.ready_batches") == str(expected["ready_batches"])
    assert cell(browser, "stats.duplicates_suppressed") == str(expected["duplicates_suppressed"])
    # The page's script polls the JSON endpoint; each reading is a point of every chart.
    depth = browser.find_element(By.ID, "chart-depth")
    WebDriverWait(browser, 30).until(lambda _: int(depth.get_attribute("data-points") or 0) >= 2)
    points = depth.find_element(By.CSS_SELECTOR, "polyline.s0").get_attribute("points") or ""
    assert len(re.findall(r"[\d.]+,[\d.]+", points)) >= 2
    assert without_ages(stats_json(busy_db)) == without_ages(expected)  # nothing changed
    if busy_db.backend == "sqlite":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))


def test_dead_letter_found_opened_and_requeued(
    busy_db: Database, web: Web, browser: webdriver.Chrome
) -> None:
    served = web(busy_db, "--allow-actions")
    before = dead_ids(busy_db)
    browser.get(served.url)

    find(browser, By.LINK_TEXT, "Dead letters").click()
    find(browser, By.PARTIAL_LINK_TEXT, DEAD_ERROR).click()
    first = find(browser, By.CSS_SELECTOR, "#dead-ids a")
    event_id = int(first.text)
    first.click()
    assert find(browser, By.ID, "event-status").text == "dead"
    assert DEAD_ERROR in find(browser, By.ID, "last-error").text
    find(browser, By.ID, "requeue").click()
    assert "requeue 1 dead event" in find(browser, By.ID, "what").text
    find(browser, By.ID, "confirm").click()

    assert find(browser, By.ID, "message").text == "requeued 1 dead event(s)"
    assert dead_ids(busy_db) == [i for i in before if i != event_id]
    info = Inspector(Config.load(db_path=busy_db.location)).show(event_id)
    assert info is not None and info["status"] == "pending"


def test_requeue_is_refused_with_actions_off(
    busy_db: Database, web: Web, browser: webdriver.Chrome
) -> None:
    served = web(busy_db)
    before = dead_ids(busy_db)
    browser.get(f"{served.url}events/{before[0]}")
    assert not browser.find_elements(By.ID, "requeue")
    # A hand-made form (what a page elsewhere could post) is refused by the server.
    browser.execute_script(
        """
        const form = document.createElement("form");
        form.method = "post"; form.action = arguments[0];
        for (const [k, v] of [["ids", arguments[1]], ["confirm", "yes"], ["csrf", "x"]]) {
          const input = document.createElement("input");
          input.name = k; input.value = v; form.appendChild(input);
        }
        document.body.appendChild(form); form.submit();
        """,
        served.url + "dead/requeue",
        str(before[0]),
    )
    assert "actions are off" in find(browser, By.ID, "message").text
    assert dead_ids(busy_db) == before


def test_sql_page_refuses_a_write(busy_db: Database, web: Web, browser: webdriver.Chrome) -> None:
    served = web(busy_db)
    before = stats_json(busy_db)["counts"]
    browser.get(served.url + "sql")

    query = browser.find_element(By.ID, "query")
    query.clear()
    query.send_keys("delete from events")
    browser.find_element(By.ID, "run").click()

    assert "refused" in find(browser, By.ID, "error").text
    assert stats_json(busy_db)["counts"] == before
