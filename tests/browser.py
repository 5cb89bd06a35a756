"""Headless Chromium for the browser tests: Debian's ``chromium`` and ``chromedriver``
(installed by ``tests/run.sh`` as root), driven through selenium with explicit paths, so
selenium never downloads a browser or a driver. Every wait is bounded."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PAGE_TIMEOUT_S = 60


def require_browser() -> None:
    """Skip when the browser is missing and cannot be installed (not root); fail in CI."""
    if CHROMIUM and CHROMEDRIVER:
        return
    if os.geteuid() == 0 or os.environ.get("CI") == "true":
        pytest.fail("chromium/chromedriver missing: tests/run.sh installs them (apt-get)")
    pytest.skip("chromium/chromedriver not installed and not root (tests/run.sh installs them)")


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver, quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(PAGE_TIMEOUT_S)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def page_text(driver: Any) -> str:
    """The rendered text of the whole page (also what is scrolled out of view)."""
    return str(driver.execute_script("return document.body.innerText"))


def wait_for_text(driver: Any, *texts: str, timeout: float = PAGE_TIMEOUT_S) -> str:
    """The page's visible text once it contains every one of ``texts``."""
    end = time.monotonic() + timeout
    text = ""
    while time.monotonic() < end:
        with contextlib.suppress(Exception):  # the page may be re-rendering
            text = page_text(driver)
            if all(t in text for t in texts):
                return text
        time.sleep(0.5)
    missing = [t for t in texts if t not in text]
    raise AssertionError(f"{driver.current_url}: {missing} not shown within {timeout} s; "
                         f"the page said:\n{text[-2000:]}")  # fmt: skip


def screenshot(driver: Any, path: Path) -> Path:
    """Save a PNG of the window; also into ``$STACKGAN_SCREENSHOTS`` when set (the docs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), path
    docs = os.environ.get("STACKGAN_SCREENSHOTS")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(docs) / path.name)
    return path


def wait_js(driver: Any, script: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
    """The value of the JavaScript expression ``script`` once it is truthy."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            value = driver.execute_script(f"return ({script});")
            if value:
                return value
        time.sleep(0.5)
    raise AssertionError(f"{driver.current_url}: {what} not within {timeout} s")


def click_text(driver: Any, text: str) -> Any:
    """Click the element whose own text is ``text`` (scrolled into view first)."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, f"//*[text()='{text}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()
    return element


def scroll_to_text(driver: Any, text: str) -> None:
    """Scroll the element whose own text is ``text`` to the top of its scroll container."""
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.XPATH, f"//*[text()='{text}']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
