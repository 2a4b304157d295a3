"""Take the dashboard's screenshots (docs/images/*.png) with the system Chromium.

    python docs/screenshots.py            # needs playwright (pip) and chromium (apt)

For each example catalogue (examples/catalogues/creators and product-images): copies its
bucket folder to a temporary folder with a few more top rows, sets up a private embedded
database as the quick start does (for product-images, the shop's tables and rows first),
starts ``reconciler serve``, applies the first plan, then changes the bucket so that the
pending plan creates, updates, moves and deletes, and photographs the overview and that
run's page at 1280 px, and the overview at 390 px (a phone).
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
import yaml
from playwright.sync_api import sync_playwright

from reconciler.store.db import open_database

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "catalogues"
IMAGES = ROOT / "docs" / "images"
CHROMIUM = os.environ.get("RECONCILER_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def more_creators(bucket: Path) -> None:
    for name in ("Carmen", "Dmitri", "Emeka", "Farah", "Gus"):
        for post in ("Morning", "Studio Session"):
            for i in range(3):
                write(bucket / name / post / f"{i:02}.jpg", 1000 + i)


def creators_drift(bucket: Path) -> None:
    """A creator gone, a post renamed, an image rewritten."""
    shutil.rmtree(bucket / "Gus")
    (bucket / "Farah" / "Morning").rename(bucket / "Farah" / "Sunrise")
    write(bucket / "Emeka" / "Morning" / "02.jpg", 2000)


MORE_PRODUCTS = """
INSERT INTO products (id, name) VALUES ('p11', 'Rye crackers'), ('p12', 'Olive oil'), ('p13', 'Sea salt');
INSERT INTO product_variants (product_id, weight)
  VALUES ('p11', '200g'), ('p12', '500ml'), ('p12', '1l'), ('p13', '250g');
"""


def more_products(bucket: Path) -> None:
    for product, weight in (("p11", "200g"), ("p12", "500ml"), ("p12", "1l"), ("p13", "250g")):
        for kind in ("hero-card", "info-card"):
            write(bucket / "products" / product / weight / kind / "front.jpg", 1200)


def products_drift(bucket: Path) -> None:
    """An image gone, one new, one replaced, and a variant folder of images renamed."""
    (bucket / "products" / "p42" / "500g" / "info-card" / "back.png").unlink()
    write(bucket / "products" / "p7" / "250g" / "other-images" / "label.webp", 900)
    write(bucket / "products" / "p11" / "200g" / "hero-card" / "front.jpg", 2400)
    (bucket / "products" / "p13" / "250g" / "info-card").rename(bucket / "products" / "p13" / "250g" / "other-images")


CATALOGUES = {
    "creators": (more_creators, creators_drift, None),
    "product-images": (more_products, products_drift, MORE_PRODUCTS),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(c: httpx.Client, run_id: int) -> dict:
    while (run := c.get(f"/api/runs/{run_id}").json())["status"] in ("planning", "applying"):
        time.sleep(0.1)
    return run


def shoot(name: str, work: Path) -> None:
    grow, drift, platform_rows = CATALOGUES[name]
    bucket = work / "bucket"
    shutil.copytree(EXAMPLES / name / "bucket", bucket)
    grow(bucket)
    config = work / "reconciler.yaml"
    config.write_text(yaml.safe_dump({"catalogue": name, "source": {"url": str(bucket)},
                                      "database": {"state_dir": str(work / "state")},
                                      "cdn_base_url": "https://cdn.example.com",
                                      "serve": {"interval": 3600}}), "utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("DATABASE_URL", "RECONCILER_CONFIG", "RECONCILER_API_TOKENS"):
        env.pop(var, None)
    base = [sys.executable, "-m", "reconciler", "--config", str(config)]
    if (EXAMPLES / name / "platform.sql").exists():
        with open_database(None, str(work / "state"), create=True) as db, db.conn.cursor() as cur:
            cur.execute((EXAMPLES / name / "platform.sql").read_text("utf-8") + (platform_rows or ""))
            db.conn.commit()
    subprocess.run([*base, "init"], check=True, env=env, cwd=work, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen([*base, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    token_file = work / "state" / f"serve-{port}.token"  # the token serve makes without RECONCILER_API_TOKENS
    try:
        c = httpx.Client(base_url=url, timeout=60)
        for _ in range(600):
            try:
                if token_file.exists() and c.get("/healthz").status_code == 200:
                    c.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
                    if c.get("/api/runs").json()["runs"]:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        first = wait(c, c.get("/api/runs").json()["runs"][-1]["id"])
        c.post(f"/api/runs/{first['id']}/apply").raise_for_status()
        drift(bucket)
        pending = wait(c, c.post("/api/runs").json()["id"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for width, shots in ((1280, (("/", "overview"), (f"/runs/{pending['id']}", "run"))),
                                 (390, (("/", "overview-390"),))):
                page = browser.new_page(viewport={"width": width, "height": 900})
                page.goto(f"{url}/login?token={token_file.read_text().strip()}")
                for path, shot in shots:
                    page.goto(url + path)
                    page.screenshot(path=str(IMAGES / f"dashboard-{name}-{shot}.png"), full_page=True)
                page.close()
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name in CATALOGUES:
        work = Path(tempfile.mkdtemp(prefix=f"reconciler-shots-{name}-"))
        try:
            shoot(name, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print(f"screenshots in {IMAGES.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
