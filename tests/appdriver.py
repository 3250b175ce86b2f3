"""Driving `streamlit run app.py` in Debian's Chromium: the server, and the page helpers that find
Streamlit's elements. Shared by tests/test_browser.py and bench/bench_app.py."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
RUN_ID = re.compile(r"Run (\d{8}-\d{6}-[0-9a-f]+) ·")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except OSError:
        return False


def serve(env: dict, log, timeout: float = 60, hold: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on 127.0.0.1 with ``env``, its output to ``log``; returns once it answers.
    Raises RuntimeError (the server stopped again) when it does not come up within ``timeout`` seconds.
    With ``hold``, the server's training runs wait after their first step until that file exists."""
    port = free_port()
    argv = ["run", "app.py", "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless",
            "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    command = [sys.executable, "-m", "streamlit", *argv]
    if hold is not None:
        here = str(Path(__file__).resolve().parent)
        command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {here!r}); import training_gate; "
                   f"training_gate.serve_held({str(hold)!r}, {argv!r})"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"streamlit did not come up within {timeout:.0f} s")
        time.sleep(0.5)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """End the server and whatever it started (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def key(k: str) -> str:
    """CSS selector of the element Streamlit marks with the key ``k`` (its class st-key-<k>, dots made dashes)."""
    return ".st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", k.strip())  # as Streamlit's frontend makes the class


def shown(locator):
    """Only what is on screen. A chart whose figure changed is a new element: Streamlit keeps the old copy in
    the page, hidden and marked stale, until the script run ends, so text and keys can match twice."""
    return locator.filter(visible=True)


def keyed(page, k: str):
    return shown(page.locator(key(k)))


def nav(page, title: str) -> None:
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()


def choose(page, widget_key: str, option: str) -> None:
    """Pick the option whose shown text starts with ``option`` in the selectbox with key ``widget_key``."""
    box = keyed(page, widget_key).get_by_role("combobox")
    box.click()
    page.get_by_role("option").filter(has_text=re.compile("^" + re.escape(option))).first.click()
    expect(box).to_have_value(re.compile("^" + re.escape(option)))


def fill(page, values: dict) -> None:
    """Type each value into the number or text input with that key, as a user would (Tab commits it)."""
    for k, value in values.items():
        field = keyed(page, k).locator("input")
        field.fill(str(value))
        field.press("Tab")
