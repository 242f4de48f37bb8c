"""Headless Chromium for the report tests (Debian's chromium and chromium-driver, which `make install`
puts on the machine): open a page with the network switched off, read its console, hover and click."""
from __future__ import annotations

import os
import shutil

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")


def _find(names, what):
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)
        if path:
            return path
    raise RuntimeError(f"{what} not found (looked for {', '.join(names)}); `make install` installs Debian's "
                       "chromium and chromium-driver")


def start_browser(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _find(CHROMIUM, "Chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--allow-file-access-from-files",
                # no network: every host resolves nowhere and any proxy use fails
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9", "--no-first-run"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_find(DRIVER, "chromedriver")), options=opts)
    driver.execute_cdp_cmd("Network.enable", {})
    offline(driver, True)
    return driver


def offline(driver, on: bool) -> None:
    """The browser's network switched off (on) or back (off: still no host resolves, loopback does)."""
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": on, "latency": 0, "downloadThroughput": -1,
                                                               "uploadThroughput": -1})


def open_page(driver, path: str, timeout: float = 30.0, served: bool = False) -> list[dict]:
    """Loads a report and waits until its script has drawn it (or logged an error); returns the console's
    messages. served: path is an http URL (of `fusedlens view --serve`)."""
    import time

    driver.get_log("browser")  # drop what an earlier page left
    if served:  # loopback only (the host resolver maps every name nowhere)
        offline(driver, False)
        try:
            driver.get(path)
        finally:
            offline(driver, True)
    else:
        driver.get("file://" + os.path.abspath(path))
    logs, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        logs += driver.get_log("browser")
        if console_errors(logs) or driver.execute_script(
                "return document.body && document.body.getAttribute('data-ready')") == "1":
            return logs + driver.get_log("browser")
        time.sleep(0.05)
    raise TimeoutError(f"{path} was not drawn in {timeout} s; console: {logs}")


def console_errors(logs: list[dict]) -> list[str]:
    return [entry["message"] for entry in logs if entry.get("level") in ("SEVERE", "ERROR")]


def network_requests(driver) -> list[str]:
    """Every resource the page asked for beyond itself (a self-contained page asks for none)."""
    return driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def hover(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(element).perform()


def tooltip_text(driver) -> str:
    return driver.execute_script(
        "const t = document.getElementById('fl-tooltip'); return t && t.style.display !== 'none' ? t.innerText : ''")


def screenshot(driver, path: str, min_colours: int = 8) -> str:
    """Saves a screenshot of the whole page and checks that it shows a drawing, not a blank page."""
    import numpy as np
    from PIL import Image

    height, frame = driver.execute_script("return [Math.min(document.body.scrollHeight + 20, 4000), "
                                          "window.outerHeight - window.innerHeight]")
    driver.set_window_size(driver.get_window_size()["width"], max(height, 400) + frame)
    driver.save_screenshot(path)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels[:: max(1, len(pixels) // 200_000)], axis=0))
    assert colours >= min_colours, f"{path}: {colours} colours; the page looks empty"
    return path
