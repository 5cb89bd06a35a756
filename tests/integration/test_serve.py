"""``stackgan serve``: a real uvicorn server on loopback, bad requests refused with a 4xx,
seed-determined images over JSON, and the page driven in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    headless_chromium,
    require_browser,
    screenshot,
    wait_for_text,
    wait_js,
)
from tests.mlflow_server import free_port, stop_group

pytestmark = pytest.mark.slow
CAPTION = "a small bird with red wings and a blue belly."


@pytest.fixture(scope="module")
def server(tiny_stage2_network: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_dir = tmp_path_factory.mktemp("serve")
    port = free_port()
    cmd = [sys.executable, "-m", "stackgan.cli.serve", "--network", str(tiny_stage2_network),
           "--encoder", "twin", "--port", str(port), "--threads", "1"]  # fmt: skip
    with open(log_dir / "serve.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            end = time.monotonic() + 60
            while True:
                assert proc.poll() is None, (log_dir / "serve.log").read_text()
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    assert time.monotonic() < end, "stackgan serve did not come up in 60 s"
                    time.sleep(0.3)
            yield url
        finally:
            stop_group(proc)


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/api/generate", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"\xff\xfe{}", 400, "not UTF-8"),
        (b"caption=a red bird", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"caption": "   "}).encode(), 422, "non-empty string"),
        (json.dumps({"samples": 2}).encode(), 422, "non-empty string"),
        (json.dumps({"caption": "a" * 5000}).encode(), 422, "at most 1000"),
        (json.dumps({"caption": "a" * 20000}).encode(), 413, "over 16384 bytes"),
        (json.dumps({"caption": CAPTION, "samples": 99}).encode(), 422, "samples"),
        (json.dumps({"caption": CAPTION, "seed": "7"}).encode(), 422, "seed"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server: str, body: bytes, status: int, message: str) -> None:
    got, data = post(server, body)
    assert got == status, data
    assert message in data["error"] and "Traceback" not in data["error"]


def test_json_endpoint_is_seed_determined(server: str) -> None:
    body = {"caption": CAPTION, "samples": 3, "seed": 7}
    status, a = post(server, json.dumps(body).encode())
    assert status == 200, a
    assert len(a["stage1"]) == len(a["final"]) == 3 and a["caption"] == CAPTION
    assert a["encoder"]["name"] == "twin" and a["network"]["stage"] == 2
    _, b = post(server, json.dumps(body).encode())
    assert a == b
    _, c = post(server, json.dumps({**body, "seed": 8}).encode())
    assert c["final"] != a["final"] and len(set(a["final"])) == 3  # noise differs per sample


def test_page_in_a_real_browser(server: str, tmp_path: Path) -> None:
    require_browser()
    from selenium.webdriver.common.by import By

    with headless_chromium(1100, 800) as driver:
        driver.get(server)
        wait_for_text(driver, "Birds from your sentences", "Generate")
        driver.find_element(By.ID, "caption").send_keys(CAPTION)
        for field, value in (("samples", "2"), ("seed", "11")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        driver.find_element(By.ID, "go").click()
        wait_for_text(driver, f'"{CAPTION}", seed 11')
        loaded = "[...document.images].filter(i => i.complete && i.naturalWidth > 0)"
        sizes = wait_js(driver, f"{loaded}.length == 4 && {loaded}.map(i => i.naturalWidth)", "4")
        assert sizes == [64, 256, 64, 256]  # Stage-I and Stage-II side by side, per sample
        shown = driver.execute_script("return [...document.images].map(i => i.src)")
        screenshot(driver, tmp_path / "serve-page.png")

        # An empty caption: the page shows the server's 422 message.
        driver.find_element(By.ID, "caption").clear()
        driver.find_element(By.ID, "caption").send_keys(" ")
        driver.find_element(By.ID, "go").click()
        wait_for_text(driver, "caption: expected a non-empty string")

    status, data = post(server, json.dumps({"caption": CAPTION, "samples": 2, "seed": 11}).encode())
    assert status == 200
    expected = [f"data:image/png;base64,{png}" for pair in zip(data["stage1"], data["final"],
                strict=True) for png in pair]  # fmt: skip
    assert shown == expected


def test_a_stage1_network_returns_stage1_images_only(
    tiny_stage1_network: tuple[Path, Path],
) -> None:
    from stackgan.sampling import Sampler
    from stackgan.serve import generate_images, parse_request
    from stackgan.text.twin import TwinTextEncoder

    caption, samples, seed = parse_request(json.dumps({"caption": f" {CAPTION} "}).encode())
    assert (caption, samples, seed) == (CAPTION, 4, 0)  # stripped; the defaults
    out = generate_images(Sampler.load(tiny_stage1_network[0]), TwinTextEncoder(), caption, 2, 3)
    assert len(out["stage1"]) == 2 and out["final"] == [] and out["network"]["stage"] == 1
