"""Take the README's dashboard screenshots (docs/*.png) with the system Chromium.

    python docs/screenshots.py            # needs playwright (pip) and chromium (apt)

Copies the example bucket to a temporary folder with a few more creators, starts
``reconciler serve`` on a private embedded database, applies the first plan, then
removes a creator and renames a post so that the pending plan deletes and moves,
and photographs the overview, that run's page and the history at 1280 px.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("RECONCILER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="reconciler-shots-"))
    bucket = work / "bucket"
    shutil.copytree(ROOT / "examples" / "bucket", bucket)
    for name in ("Carmen", "Dmitri", "Emeka", "Farah", "Gus"):
        for post in ("Morning", "Studio Session"):
            for i in range(3):
                p = bucket / name / post / f"{i:02}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x" * (1000 + i))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = [sys.executable, "-m", "reconciler", "--state-dir", str(work / "state"), "--source", str(bucket),
            "--cdn-base-url", "https://cdn.example.com"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("DATABASE_URL", "RECONCILER_CONFIG", "RECONCILER_API_TOKENS"):
        env.pop(name, None)
    subprocess.run([*base, "init"], check=True, env=env, cwd=work, stdout=subprocess.DEVNULL)
    proc = subprocess.Popen([*base, "serve", "--listen", f"127.0.0.1:{port}", "--interval", "3600"], env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    token_file = work / "state" / f"serve-{port}.token"  # the token serve makes without RECONCILER_API_TOKENS
    try:
        c = httpx.Client(base_url=url, timeout=60)
        for _ in range(300):
            try:
                if token_file.exists() and c.get("/healthz").status_code == 200:
                    c.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
                    if c.get("/api/runs").json()["runs"]:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

        def wait(run_id: int) -> dict:
            while (run := c.get(f"/api/runs/{run_id}").json())["status"] == "planning":
                time.sleep(0.1)
            return run

        first = wait(c.get("/api/runs").json()["runs"][-1]["id"])
        c.post(f"/api/runs/{first['id']}/apply").raise_for_status()
        wait(c.post("/api/runs", json={"models": ["Carmen"]}).json()["id"])  # a check with nothing to do
        shutil.rmtree(bucket / "Gus")
        (bucket / "Farah" / "Morning").rename(bucket / "Farah" / "Sunrise")
        (bucket / "Emeka" / "Morning" / "03.jpg").write_bytes(b"y" * 2000)
        pending = wait(c.post("/api/runs").json()["id"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/login?token={token_file.read_text().strip()}")
            for path, name in (("/", "overview"), (f"/runs/{pending['id']}", "run")):
                page.goto(url + path)
                page.screenshot(path=str(ROOT / "docs" / f"dashboard-{name}.png"), full_page=True)
            # the history: that plan applied, and a rollback of it waiting for review
            applied = c.post(f"/api/runs/{pending['id']}/apply").json()
            c.post(f"/api/applies/{applied['apply_id']}/rollback").raise_for_status()
            page.goto(url + "/history")
            page.screenshot(path=str(ROOT / "docs" / "dashboard-history.png"), full_page=True)
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
