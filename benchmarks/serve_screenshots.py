"""Screenshots of the ``side4video serve`` page on the demo's own models (the pictures in the README).

    side4video demo --output-dir demo_output
    python benchmarks/serve_screenshots.py demo_output --out benchmarks/results/serve

Serves what ``side4video serve --checkpoint demo_output/side4video-retrieval-tiny/best.pt --checkpoint
demo_output/side4video-tiny/best.pt --videos demo_output`` serves, searches for a caption and classifies a
held-out video of the motion task, and writes ``search.png`` and ``classify.png``. Needs Chromium with
chromedriver (Debian: ``apt-get install chromium chromium-driver``) and ``pip install selenium``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from pathlib import Path

import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from side4video.web import create_app

QUERY = "a red square moves left"
CLASSIFY = "videos/test/red_square_left_000.mp4"  # held out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo_output", help="output folder of side4video demo")
    parser.add_argument("--out", default="benchmarks/results/serve")
    args = parser.parse_args()
    demo = Path(args.demo_output)
    app = create_app([str(demo / "side4video-retrieval-tiny" / "best.pt"), str(demo / "side4video-tiny" / "best.pt")],
                     demo / "captions")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,760"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    wait = WebDriverWait(driver, 600)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(base + "/#search")
        wait.until(lambda d: "videos indexed" in d.find_element(By.ID, "index-status").text)
        driver.find_element(By.ID, "query").send_keys(QUERY)
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results .hit"))
        wait.until(lambda d: d.execute_script("return [...document.images].every(i => i.complete)"))
        driver.save_screenshot(str(out / "search.png"))

        driver.find_element(By.ID, "tab-classify").click()
        Select(driver.find_element(By.ID, "video-select")).select_by_value(CLASSIFY)
        driver.find_element(By.ID, "classify-button").click()
        wait.until(lambda d: d.find_element(By.ID, "classify-result").is_displayed())
        wait.until(lambda d: d.execute_script("return document.getElementById('classify-strip').complete"))
        driver.save_screenshot(str(out / "classify.png"))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join()
    print(f"wrote {out / 'search.png'} and {out / 'classify.png'}")


if __name__ == "__main__":
    main()
