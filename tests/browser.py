"""Headless Chromium (Debian's chromium and chromedriver, driven by selenium) for the tests that look at
a page: the MLflow UI, the offline plots page, the web chat."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Chromium on a machine without internet: no background connections, no sandbox (root in CI).
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1000"]


def require_chromium() -> None:
    """Skip without the browser; fail under .ci/run, which sets LLMPIPE_REQUIRE_BROWSER (there a missing
    browser is an environment fault, not a reason to test less)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("LLMPIPE_REQUIRE_BROWSER"):
            pytest.fail("Debian's chromium and chromium-driver are missing (scripts/test.sh installs them with apt)")
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test.sh installs them with apt)")


def headless_chromium(profile: Path, extra_flags: list[str] = ()):
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def send_in_web_chat(driver, settings: dict[str, str], message: str) -> None:
    """Type the settings (field id -> value) and a message into `llmpipe serve`'s web chat, and send it."""
    for field, value in settings.items():
        box = driver.find_element("id", field)
        box.clear()
        box.send_keys(value)
    driver.find_element("id", "input").send_keys(message)
    driver.find_element("id", "send").click()
