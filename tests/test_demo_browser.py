"""The web demo in a real browser: ``zsad demo`` with the tiny random backbone, driven by headless Chromium.

Uses the system's Chromium and chromedriver (Debian packages ``chromium`` and ``chromium-driver``; ``.ci/run``
installs them); nothing is downloaded.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from demo_server import running_demo

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs the system's chromium and chromedriver (apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")


@pytest.fixture
def server(tmp_path, loopback_port):
    """``zsad demo`` in a subprocess on a free loopback port; always stopped."""
    with running_demo(loopback_port, tmp_path / "server.log") as (url, _process):
        yield url


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download a browser or driver
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_score_and_ask(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from zsad.data.synthetic import make_sample
    from zsad.types import GRID_CELLS

    image = tmp_path / "part with defect.png"
    make_sample("weave", "hole", size=160, rng=np.random.default_rng(3)).image.save(image)
    wait = WebDriverWait(browser, 40)
    browser.get(server)
    # a user mistake is a message on the page, not a stack trace
    wait.until(ec.element_to_be_clickable((By.ID, "zsad-score"))).click()
    toast = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".toast-body.error")))
    assert "no images" in toast.text and "Traceback" not in browser.page_source
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#zsad-files input[type=file]")))
    upload.send_keys(str(image))
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsad-files"), "part with defect"))
    browser.find_element(By.ID, "zsad-score").click()

    heat_map = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#zsad-gallery img")))
    wait.until(lambda _: heat_map.get_attribute("naturalWidth") not in (None, "0"))
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsad-table"), "part_with_defect.png"))

    # the threshold slider decides again without re-scoring: at 0 every pixel is in the mask, so the defect has a
    # position whatever the random weights say
    number = browser.find_element(By.CSS_SELECTOR, "#zsad-threshold input[type=number]")
    number.send_keys(Keys.CONTROL, "a")
    number.send_keys("0", Keys.TAB)
    wait.until(ec.text_to_be_present_in_element((By.ID, "zsad-status"), "at threshold 0.00"))

    question = browser.find_element(By.CSS_SELECTOR, "#zsad-question textarea, #zsad-question input")
    question.send_keys("where is the defect?")
    browser.find_element(By.ID, "zsad-ask").click()

    def answer(driver):
        bots = driver.find_elements(By.CSS_SELECTOR, "#zsad-chat .bot, #zsad-chat [data-testid='bot']")
        text = " ".join(b.text for b in bots).strip()
        return text or False

    try:
        text = wait.until(answer)
    finally:
        browser.save_screenshot(str(tmp_path / "demo.png"))
    assert any(cell in text.lower() for cell in GRID_CELLS), text
    assert "Traceback" not in browser.page_source
    assert Path(tmp_path / "demo.png").stat().st_size > 10_000
