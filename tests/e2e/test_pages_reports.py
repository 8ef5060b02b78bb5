"""The reports site after the demo, in headless Chromium with no network beyond loopback: the
index lists the demo's evaluation, drift report and A/B readout, and the Data Docs render their
validation table (bootstrap-table's JS, bootstrap's CSS) from the site's vendored copies.

The demo fixture's platform has no reports service; the module starts it on the demo's state
folder (the demo fixture's teardown stops it with the rest)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

import pytest

from lambdarec.harness.waiting import eventually
from lambdarec.platform import manager
from tests.e2e.conftest import screenshot

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.remote.webdriver import WebDriver

    from lambdarec.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def site(demo: tuple[Settings, dict[str, object]]) -> Iterator[tuple[str, dict[str, object]]]:
    settings, figures = demo
    manager.up(["reports"], settings=settings)
    try:
        yield f"http://{settings.bind_host}:{settings.reports_port}/", figures
    finally:
        manager.down(["reports"], settings=settings)


def index_lists_the_demos_reports(
    browser: WebDriver, base: str, figures: dict[str, object]
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(base)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "None yet" not in text, text
    last = cast("list[str]", figures["days"])[-1]
    drift = browser.find_element(By.CSS_SELECTOR, f'a[href="reports/drift/{last}/report.html"]')
    assert drift.text == last
    # The drift line says what the run found; the evaluation line what the retraining promoted.
    items = {
        li.text.split(" ")[0].split(":")[0]: li.text
        for li in browser.find_elements(By.TAG_NAME, "li")
    }
    assert "events" in items[last] and "retraining:" in items[last], items
    evaluations = browser.find_elements(By.CSS_SELECTOR, 'a[href^="reports/models/retraining/"]')
    assert len(evaluations) == 1, [a.get_attribute("href") for a in evaluations]
    evaluation_line = evaluations[0].find_element(By.XPATH, "..").text
    assert "served NDCG@10" in evaluation_line and "two_tower v1 champion" in evaluation_line
    ab = cast("dict[str, object]", figures["ab"])
    readout_day = str(ab["report_url"]).rsplit("/", 2)[-2]
    readout = browser.find_element(
        By.CSS_SELECTOR, f'a[href="reports/ab/{readout_day}/readout.html"]'
    )
    assert "lists" in readout.find_element(By.XPATH, "..").text
    data_docs_line = browser.find_element(By.CSS_SELECTOR, 'a[href="data_docs/index.html"]')
    assert "passed" in data_docs_line.find_element(By.XPATH, "..").text
    screenshot(browser, "reports-index")

    evaluations[0].click()
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Evaluation")
    screenshot(browser, "reports-evaluation")
    browser.get(base)
    browser.find_element(By.CSS_SELECTOR, f'a[href="reports/drift/{last}/report.html"]').click()
    assert last in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, "reports-drift")


def data_docs_render_offline(browser: WebDriver, base: str, figures: dict[str, object]) -> None:
    from selenium.webdriver.common.by import By

    browser.get(base + "data_docs/index.html")

    def rows() -> list[str]:
        # Read in one script: bootstrap-table redraws its rows (element handles go stale).
        return cast(
            "list[str]",
            browser.execute_script(
                "return Array.from(document.querySelectorAll('table tbody tr'))"
                ".map(r => r.innerText).filter(t => t.trim())"
            ),
        )

    # bootstrap-table draws the rows from the page's data: they exist only if its JS ran.
    listed = eventually(lambda: rows() or None, 20, message="the validation table's rows")
    days = cast("list[str]", figures["days"])
    # Newest first, a page at a time: the last day's gates are on the first page, the raw
    # events' among them; the pagination counts every validation of every day.
    assert any(f"raw_events-{days[-1]}" in row for row in listed), listed
    assert len(listed) >= 5, listed
    info = browser.execute_script(
        "const p = document.querySelector('.pagination-info'); return p ? p.innerText : ''"
    )
    total = re.search(r"of (\d+) rows", str(info))
    assert total and int(total.group(1)) >= 2 * len(days), info
    # Bootstrap's stylesheet is applied (its reboot sets the body's font stack and margin).
    font = browser.execute_script("return getComputedStyle(document.body).fontFamily")
    assert "-apple-system" in font, font
    assert browser.execute_script("return getComputedStyle(document.body).margin") == "0px"
    assert browser.execute_script("return typeof jQuery.fn.bootstrapTable") == "function"
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert any("/vendor/bootstrap/dist/css/bootstrap.min.css" in u for u in loaded), loaded
    assert [u for u in loaded if not u.startswith(base)] == []
    screenshot(browser, "data-docs-index")

    # A row opens its validation page (the page's own JS): the expectations, styled alike.
    # (Found and clicked in one script: the table may redraw between two WebDriver calls.)
    browser.execute_script("document.querySelector('table tbody tr[data-href] td').click()")
    eventually(lambda: "/validations/" in browser.current_url, 20, message="the validation page")
    assert browser.find_elements(By.CSS_SELECTOR, "table tr"), "no expectation table"
    font = browser.execute_script("return getComputedStyle(document.body).fontFamily")
    assert "-apple-system" in font, font
    screenshot(browser, "data-docs-validation")


def test_the_index_lists_the_demos_evaluation_drift_report_and_ab_readout(
    site: tuple[str, dict[str, object]], browser: WebDriver
) -> None:
    base, figures = site
    index_lists_the_demos_reports(browser, base, figures)


def test_data_docs_render_their_validation_table_offline(
    site: tuple[str, dict[str, object]], browser: WebDriver
) -> None:
    base, figures = site
    data_docs_render_offline(browser, base, figures)
