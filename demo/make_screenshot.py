"""Regenerate ``demo/screenshot.png`` (the README's picture of the demo) from the running app.

    python demo/make_screenshot.py [--backbone tiny-random] [--image-size 224] [--out demo/screenshot.png]

Serves the demo on a free loopback port, scores the bundled samples with ``auto``, selects the image with the hole,
asks where the defect is, and photographs the page in headless Chromium (the system's ``chromium`` and
``chromedriver``; nothing is downloaded).
"""

import argparse
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tiny-random")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "screenshot.png"))
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--threshold", type=float, default=0.35)
    args = parser.parse_args()

    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from zsad.demo import DemoApp, DemoConfig

    app = DemoApp(DemoConfig(backbone=args.backbone, image_size=args.image_size, class_name="fabric",
                             threshold=args.threshold))
    app.warm_up()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.launch("127.0.0.1", port, block=False, quiet=True)
    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    profile = tempfile.mkdtemp(prefix="zsad-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--window-size={args.width},1200", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}/")
        select_all = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#zsad-samples input[type=checkbox]")))
        select_all.click()
        driver.find_element(By.ID, "zsad-score").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zsad-gallery img")) >= len(app.samples))
        hole = next(i for i, name in enumerate(app.samples) if "hole" in name)
        driver.find_elements(By.CSS_SELECTOR, "#zsad-gallery button.thumbnail-item, #zsad-gallery .thumbnail-item"
                             )[hole].click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "zsad-chat"), "weave_hole_0.png"))
        question = driver.find_element(By.CSS_SELECTOR, "#zsad-question textarea, #zsad-question input")
        question.send_keys("where is the defect?")
        driver.find_element(By.ID, "zsad-ask").click()
        try:
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#zsad-chat .bot, #zsad-chat [data-testid='bot']"))
        except TimeoutException:
            print("warning: the chat did not answer; the picture shows no answer")
        time.sleep(1.0)
        for _ in range(3):  # growing the window can reflow the page: repeat until everything fits
            height = driver.execute_script("return Math.max(document.body.scrollHeight, "
                                           "document.documentElement.scrollHeight)")
            driver.set_window_size(args.width, height + 120)
            time.sleep(0.7)
        driver.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.3)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        app.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
