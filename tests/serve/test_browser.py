"""The built-in page at `/` in headless Chromium: type a prompt, click, watch it stream.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and
the `selenium` package; skipped with the reason when any is missing.
"""

from __future__ import annotations

import shutil

import pytest

from tests.serve.conftest import MODEL_ID, request_json

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "headless Chromium is not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip)")

# As root on a machine without network: no sandbox, no GPU, no background connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,900",
]


@pytest.fixture
def browser(tmp_path, monkeypatch):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver
    opts = Options()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_page_streams_a_completion(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    assert browser.find_element(By.ID, "model").text == MODEL_ID

    def fill(field, value):
        el = browser.find_element(By.ID, field)
        el.clear()
        el.send_keys(value)

    fill("prompt", "The quick brown fox")
    fill("max_tokens", "20")
    fill("temperature", "1")
    fill("top_p", "0.9")
    fill("seed", "7")
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 60).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error")
        )
    )
    status = browser.find_element(By.ID, "status").text
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
    # Same request through the API: the same seed gives the same text and token count.
    code, _, body = request_json(
        server.url + "/v1/completions",
        "POST",
        {
            "prompt": "The quick brown fox",
            "max_tokens": 20,
            "temperature": 1,
            "top_p": 0.9,
            "seed": 7,
        },
    )
    assert code == 200
    shown = browser.execute_script("return document.getElementById('out').textContent")
    assert shown == body["choices"][0]["text"]
    assert int(browser.find_element(By.ID, "ntok").text) == body["usage"]["completion_tokens"]
    assert float(browser.find_element(By.ID, "tps").text) > 0
    assert status.startswith("finished: ")
    # The metrics poll fills in the server's tokens/s and the energy estimate.
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "energy").text.endswith("J"))
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0
