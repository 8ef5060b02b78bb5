"""The browser tests' headless Chromium: the distribution's ``chromium`` driven by its
``chromium-driver`` through Selenium (``make test`` installs both), with no network beyond loopback.

``demo`` runs the demo once on a private platform for the package's tests (``test_demo`` checks
its figures; the ``test_pages_*`` modules open its pages in the browser; ``test_perimeter`` starts
the rest of the services beside it and reads the socket table) and stops it after the last of
them: they are one unit of work, on one worker (tests/conftest.py).

``browser`` is one Chromium for the whole session; ``screenshot(driver, name)`` saves a PNG under
``test-artifacts/screenshots/`` (or ``$LAMBDAREC_TEST_ARTIFACTS/screenshots``), kept after the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from selenium.webdriver.remote.webdriver import WebDriver

    from lambdarec.config import Settings

ROOT = Path(__file__).resolve().parents[2]
#: Where screenshots go: kept after the run, as the test artifacts of the browser tests.
ARTIFACTS = Path(os.environ.get("LAMBDAREC_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = os.environ.get("LAMBDAREC_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LAMBDAREC_CHROMEDRIVER", "/usr/bin/chromedriver")


@pytest.fixture(scope="package")
def demo() -> Iterator[tuple[Settings, dict[str, object]]]:
    """The demo, end to end on a private platform (its own state folder and free ports): the
    settings and the figures it printed; the platform keeps running until the package's last test.
    """
    from lambdarec.demo import run_demo
    from lambdarec.harness.platform import link_kafka_jars, private_settings
    from lambdarec.platform import manager

    state = Path(tempfile.mkdtemp(prefix="lambdarec-demo-"))
    # MLflow in a SQLite file (make demo starts the MLflow server; its tracking is the same).
    settings = private_settings(state, mlflow_tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    link_kafka_jars(settings)
    try:
        figures = run_demo(
            users=300,
            items=800,
            days=3,
            seed=5,
            services=["kafka", "redis", "speed-layer", "feature-pusher", "attribution"],
            settings=settings,
            model_epochs=2,
            ab_minutes=0.5,
        )
        yield settings, figures
    finally:
        manager.down(settings=settings)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium at 1280x900 that reaches loopback only (every other host is refused)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not (Path(binary).exists() or shutil.which(binary)):
            pytest.fail(f"{binary} not found: `make test` installs chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        # Pages must work offline: any request that leaves the machine fails fast.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save the page as ``<artifacts>/screenshots/<name>.png`` and return the path."""
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
