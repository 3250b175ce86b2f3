"""Training started and watched in the app, in a real browser, against the same run from the CLI.

    python bench/bench_app.py                    # digits, efficientnet_lite0, full, 2 epochs, 64 px, 2 pairs
    python bench/bench_app.py --strategy linear-probe --epochs 10 --repeats 3
    python bench/bench_app.py --close-page        # started in the browser, not watched: the server alone

``bench_training.py`` compares ``engine.Job`` with ``engine.run`` inside one process; this
script measures what a user gets. One ``streamlit run app.py`` server and Debian's Chromium
(driven by Playwright) stay up; each repeat runs the configuration once with
``python -m ftlab train --json`` (a process of its own, the foreground) and once by clicking
through Data, Model and Train in the browser, which then watches the run: the Train page
redraws its curves, progress and confusion matrix every second until the run ends, on the
same cores. Both report training images/s (training batches only: imports, decoding and
evaluation are not in it), read from the CLI's JSON and from the app's run store.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from appdriver import CHROMIUM, CHROMIUM_ARGS, RUN_ID, choose, fill, keyed, nav, serve, shown, stop  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from ftlab.runs import RunStore  # noqa: E402

WAIT_MS = 600_000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cli_run(args, home: Path) -> float:
    cmd = [sys.executable, "-m", "ftlab", "train", "--dataset", "digits", "--backbone", args.backbone,
           "--weights", "imagenet", "--strategy", args.strategy, "--epochs", str(args.epochs),
           "--image-size", str(args.image_size), "--json"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1"},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]


def app_run(args, browser, url: str, home: Path) -> float:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(WAIT_MS)
    expect.set_options(timeout=WAIT_MS)
    page = context.new_page()
    try:
        page.goto(url)
        nav(page, "Data")
        choose(page, "data.builtin", "digits")
        nav(page, "Model & freezing")
        choose(page, "cfg.backbone", args.backbone)
        keyed(page, f"model.preset.{args.strategy.replace('-', '_')}").get_by_role("button").click()
        nav(page, "Train")
        fill(page, {"cfg.image_size": args.image_size, "cfg.epochs": args.epochs})
        keyed(page, "train.start").get_by_role("button").click()
        caption = shown(page.get_by_text(RUN_ID))
        expect(caption).to_be_visible()
        run_id = RUN_ID.search(caption.inner_text()).group(1)
        if not args.close_page:
            expect(shown(page.get_by_text(re.compile(rf"Run {run_id} finished")))).to_be_visible()
    finally:
        context.close()
    store, deadline = RunStore(home), time.monotonic() + WAIT_MS / 1000
    while (record := store.get(run_id)).status == "running":  # only with --close-page: the page saw it end
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not end within {WAIT_MS / 1000:.0f} s")
        time.sleep(1)
    if (record.strategy, record.config.get("epochs")) != (args.strategy, args.epochs):
        raise SystemExit(f"the app ran another configuration than asked: {record.config}")
    return record.summary["images_per_second"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--strategy", default="full", choices=["linear-probe", "full"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--close-page", action="store_true",
                   help="close the page once the run has started: the server's cost without the browser's")
    args = p.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver")

    rates = {"cli": [], "app": []}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        home = Path(tmp) / "home"
        server, url = serve({**os.environ, "FTLAB_HOME": str(home), "FTLAB_OFFLINE": "1"}, subprocess.DEVNULL, 90)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for i in range(args.repeats):
                rates["cli"].append(cli_run(args, Path(tmp) / "cli"))
                say(f"pair {i + 1}: CLI {rates['cli'][-1]:.1f} img/s ...")
                rates["app"].append(app_run(args, browser, url, home))
                say(f"pair {i + 1}: app {rates['app'][-1]:.1f} img/s")
        finally:
            browser.close()
            stop(server)
    cli, app = statistics.median(rates["cli"]), statistics.median(rates["app"])
    how = "page closed after Start" if args.close_page else "watched in Chromium"
    print(f"digits, {args.backbone}, {args.strategy}, {args.epochs} epochs, {args.image_size} px: "
          f"app ({how}) {app:.1f} img/s ({', '.join(f'{r:.0f}' for r in rates['app'])}) against "
          f"the CLI {cli:.1f} ({', '.join(f'{r:.0f}' for r in rates['cli'])}): **{app / cli:.3f}** of it; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
