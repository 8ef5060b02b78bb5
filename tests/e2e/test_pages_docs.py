"""The pages a developer opens after the demo, in headless Chromium with no network beyond loopback:
the serving API's docs (Swagger UI: every route of the app listed, "Try it out" on /health),
Airflow's UI (logs in, lists the project's DAGs) and MLflow's UI (the models the retraining
registered, the champion among them). Each test saves a screenshot.

Airflow and MLflow are started on the demo's private platform for this module (the demo itself
runs its DAGs with ``dag.test()`` and keeps MLflow in a SQLite file) and stopped after it: Airflow's
API server and DAG processor through the platform manager, MLflow as the platform's own ``mlflow``
service pointed at the demo's store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import TYPE_CHECKING

import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from lambdarec.harness.waiting import eventually
from tests.e2e.conftest import screenshot

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.remote.webdriver import WebDriver

    from lambdarec.config import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

Demo = tuple["Settings", dict[str, object]]
DAGS = (
    "daily_feature_pipeline",
    "drift_monitoring",
    "online_metrics",
    "weekly_model_retraining",
    "speed_layer",
)
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
#: How MLflow's model page shows the alias on the version it points to.
ALIAS = re.compile(r"\bchampion\b")
#: Seconds a page may take to render (the machine is shared with the demo's platform).
RENDER_S = 60


class _Discard:
    """A sink for an app that is only asked for its routes."""

    def send(self, events: object) -> None:
        pass

    def emit(self, record: object) -> None:
        pass


def _served_routes(settings: Settings) -> set[tuple[str, str]]:
    """(method, path) of every route of the serving app built by ``create_app`` on the demo's
    settings, as its gunicorn builds it (the routes do not depend on the recommender's data),
    but Flask's own static files."""
    from lambdarec.recommend.snapshot import Snapshot
    from serving import create_app
    from serving.apidoc import openapi_path
    from serving.recommender import Recommender

    app = create_app(
        settings,
        Recommender(Snapshot.from_items({"i1": "c1"}, [])),
        events=_Discard(),  # type: ignore[arg-type]
        impressions=_Discard(),  # type: ignore[arg-type]
        load_model=False,
    )
    return {
        (method.lower(), openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method.lower() in HTTP_METHODS
    }


def test_api_docs_list_every_route_and_try_it_out_works(demo: Demo, browser: WebDriver) -> None:
    settings, _ = demo
    base = f"http://{settings.bind_host}:{settings.serving_port}"
    browser.get(f"{base}/docs")
    wait = WebDriverWait(browser, RENDER_S)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    listed = {
        (
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text.lower(),
            block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"),
        )
        for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")
    }
    assert listed == _served_routes(settings)
    # The page rendered from this server's files alone: Swagger UI's scripts ran (the blocks
    # above) and no resource came from another host.
    hosts = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).host)"
    )
    assert set(hosts) == {f"{settings.bind_host}:{settings.serving_port}"}, hosts
    screenshot(browser, "api-docs")

    health = browser.find_element(By.ID, "operations-health-get__health")
    health.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda _: health.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    health.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait.until(
        lambda _: health.find_elements(
            By.CSS_SELECTOR, ".live-responses-table .response .response-col_status"
        )
    )
    assert [cell.text.strip() for cell in status] == ["200"]
    body = health.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    assert '"status": "ok"' in body, body
    browser.execute_script("arguments[0].scrollIntoView()", health)
    screenshot(browser, "api-docs-try-health")


@pytest.fixture(scope="module")
def airflow_ui(demo: Demo) -> Iterator[tuple[str, str]]:
    """Airflow's API server (its UI) and DAG processor on the demo's platform: (URL, password)."""
    from lambdarec.platform import manager
    from lambdarec.platform.airflow import airflow_password

    settings, _ = demo
    try:
        manager.up(["airflow-api", "airflow-dag-processor"], settings=settings)
        password = airflow_password(settings)
        assert password, "the API server wrote no password for admin"
        yield f"http://{settings.bind_host}:{settings.airflow_port}", password
    finally:
        manager.down(["airflow-api"], settings=settings)  # and the DAG processor, which needs it


def _dag_ids_shown(browser: WebDriver, url: str) -> set[str]:
    browser.get(f"{url}/dags")
    with contextlib.suppress(TimeoutException):  # a partial list is read as it is
        WebDriverWait(browser, 10).until(
            lambda b: set(DAGS) <= {e.text for e in b.find_elements(By.CSS_SELECTOR, "a")}
        )
    return {e.text for e in browser.find_elements(By.CSS_SELECTOR, "a")} & set(DAGS)


def test_airflow_ui_logs_in_and_lists_the_dags(
    airflow_ui: tuple[str, str], browser: WebDriver
) -> None:
    url, password = airflow_ui
    browser.get(url)
    wait = WebDriverWait(browser, RENDER_S)
    user = wait.until(ec.presence_of_element_located((By.NAME, "username")))
    screenshot(browser, "airflow-login")
    user.send_keys("admin")
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "/auth/login" not in b.current_url)
    # The DAG processor parses the folder once it starts: the list fills within a minute or two.
    shown = eventually(
        lambda: _dag_ids_shown(browser, url) == set(DAGS),
        240,
        interval_s=5,
        message=lambda: (
            f"the DAG list to show {sorted(DAGS)}; it shows {sorted(_dag_ids_shown(browser, url))}"
        ),
    )
    assert shown
    screenshot(browser, "airflow-dags")


@pytest.fixture(scope="module")
def mlflow_ui(demo: Demo) -> Iterator[str]:
    """The platform's ``mlflow`` service, on the demo's tracking store: its URL."""
    from lambdarec.platform import processes
    from lambdarec.platform.stores import mlflow

    settings, _ = demo
    service = mlflow(settings)
    command = list(service.command)
    command[command.index("--backend-store-uri") + 1] = settings.mlflow_tracking_uri
    service = dataclasses.replace(service, command=command)
    if service.prepare:
        service.prepare()
    processes.spawn(service, settings)
    try:
        eventually(service.health, 120, interval_s=1, message="MLflow's /health")
        yield service.url
    finally:
        processes.stop(service, settings)


def _promoted(settings: Settings) -> list[str]:
    """The demo's registered models that hold the champion alias, read from its store."""
    from mlflow import MlflowClient

    from lambdarec.registry import CHAMPION

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    return sorted(m.name for m in client.search_registered_models() if CHAMPION in m.aliases)


def test_mlflow_ui_shows_the_promoted_models(
    demo: Demo, mlflow_ui: str, browser: WebDriver
) -> None:
    settings, _ = demo
    promoted = _promoted(settings)
    assert promoted, "the demo's retraining promoted no model to champion"
    browser.get(f"{mlflow_ui}/#/models")
    wait = WebDriverWait(browser, RENDER_S)
    wait.until(lambda b: all(name in b.find_element(By.TAG_NAME, "body").text for name in promoted))
    # MLflow may greet with a "new model registry UI" dialog over the list: close it.
    for dialog in browser.find_elements(By.CSS_SELECTOR, "[role=dialog]"):
        dialog.send_keys(Keys.ESCAPE)
    with contextlib.suppress(TimeoutException):  # the picture only: the list was read above
        WebDriverWait(browser, 5).until(
            lambda b: not b.find_elements(By.CSS_SELECTOR, "[role=dialog], .ant-modal-mask")
        )
    screenshot(browser, "mlflow-models")
    for name in promoted:
        # A fresh load: moved to by its hash alone, the page kept the last model's version list.
        browser.get("about:blank")
        browser.get(f"{mlflow_ui}/#/models/{name}")
        wait.until(lambda b: ALIAS.search(b.find_element(By.TAG_NAME, "body").text))
        screenshot(browser, f"mlflow-model-{name}")
