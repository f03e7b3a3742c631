"""The MLflow UI's Compare view of two Table 2 rows, opened in a real headless browser and saved as a screenshot.

    python train.py +experiment=row3_mlp_connector && python train.py +experiment=row7_gqa   # (tiny scale) once
    python scripts/ui_screenshot.py [--store sqlite:///mlflow.db] [--rows row3_mlp_connector row7_gqa]
                                    [--out docs/mlflow_compare.png] [--browser chromium]

It starts ``mlflow ui`` on 127.0.0.1 (a free port) over the store, picks each row's newest finetune run (the run
that carries the ``eval/<bench>`` headline metrics), opens ``#/compare-runs`` with both in headless Chromium driven by
Playwright, shows the parameters that differ, saves the run details as the PNG and checks that the compare view's
metrics list holds the ``eval/<bench>`` rows. Needs ``pip install playwright`` and a Chromium binary (``apt-get
install chromium``); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def newest_finetune_runs(store: str, rows: list[str]) -> tuple[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("lmm")
    if exp is None:
        raise SystemExit(f"no experiment 'lmm' in {store}: train the rows first (see the docstring)")
    runs = []
    for row in rows:
        found = client.search_runs([exp.experiment_id], f"tags.experiment = '{row}' and tags.stage = 'finetune'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            raise SystemExit(f"no finetune run of {row} in {store}: python train.py +experiment={row}")
        runs.append(found[0])
    return exp.experiment_id, runs


def browse(browser: str, url: str, out: Path, size: str) -> list[str]:
    """Open ``url`` in headless Chromium (Playwright driving the given binary), show the parameters that differ,
    screenshot the run details into ``out``; then scroll the metrics list to its ``eval/`` rows. Returns the
    ``eval/...`` metric names the page showed."""
    from playwright.sync_api import sync_playwright

    width, height = (int(x) for x in size.split(","))
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": width, "height": height})
        page.goto(url)
        page.wait_for_selector("text=Run details", timeout=120_000)
        page.get_by_text("Show diff only").first.click()  # the parameters: only those that differ
        page.get_by_text("Run details").first.scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(out))
        anchor = page.get_by_text("data/samples_seen", exact=True).first  # the metrics list (virtualised)
        anchor.scroll_into_view_if_needed()
        box = anchor.bounding_box()
        page.mouse.move(box["x"] + 450, box["y"])
        seen: set[str] = set()
        for _ in range(20):
            seen |= {t.strip() for t in page.locator("text=/^eval\\//").all_inner_texts()}
            if any(t.count("/") == 1 for t in seen):
                break
            page.mouse.wheel(0, 200)
            page.wait_for_timeout(300)
        chrome.close()
    return sorted(seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}")
    p.add_argument("--rows", nargs=2, default=["row3_mlp_connector", "row7_gqa"])
    p.add_argument("--out", default="docs/mlflow_compare.png")
    p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--size", default="1500,1000")
    a = p.parse_args(argv)
    exp_id, runs = newest_finetune_runs(a.store, a.rows)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", a.store, "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        ids = json.dumps([r.info.run_id for r in runs])
        url = f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={urllib.parse.quote(json.dumps([exp_id]))}"
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = browse(a.browser, url, out, a.size)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
    names = [r.info.run_name for r in runs]
    headline = [m for m in shown if m.count("/") == 1]
    if not headline or not out.is_file() or out.stat().st_size < 10_000:
        print(f"the compare view showed no eval/<bench> metric (saw {shown}); screenshot {out}", file=sys.stderr)
        return 1
    print(f"compare view of {', '.join(names)} → {out} ({out.stat().st_size:,} bytes); its metrics list shows "
          f"{', '.join(headline)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
