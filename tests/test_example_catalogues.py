"""The quick start of each catalogue in examples/catalogues/README.md, run as written.

Each ``sh`` block runs line by line in a copy of examples/, as tests/shell.py runs
a line. Only the database differs from a user's run: ``DATABASE_URL`` names a fresh
database on the test server instead of an embedded one under ``state/`` (which the
configs leave to the default, so the variable wins as it would for a user).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .conftest import sql_on
from .shell import run_line

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "examples" / "catalogues" / "README.md"


def quick_starts() -> dict[str, list[str]]:
    """{catalogue folder: its block's lines}, from the README."""
    text = README.read_text("utf-8")
    found = {}
    for name, block in re.findall(r"^## (\S+)\n.*?```sh\n(.*?)```", text, flags=re.S | re.M):
        found[name] = [line for line in block.splitlines() if line.strip()]
    return found


def test_every_example_catalogue_has_a_quick_start():
    folders = sorted(p.name for p in README.parent.iterdir() if p.is_dir())
    assert folders == sorted(quick_starts()) == ["creators", "documents", "product-images"]


def run_quick_start(name: str, cli, monkeypatch, tmp_path: Path) -> list:
    """The results of the block's ``reconciler`` lines, each of which must succeed."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    results = []
    for line in quick_starts()[name]:
        r = run_line(line, cli, monkeypatch, tmp_path)
        assert r.code == 0, (line, r.err)
        if line.startswith("reconciler "):
            results.append(r)
    return results


def _rows(url: str, sql: str) -> list:
    with sql_on(url) as run:
        return run(sql)


def test_creators_quick_start(cli, monkeypatch, tmp_path, empty_database_url):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    results = run_quick_start("creators", cli, monkeypatch, tmp_path)
    assert "Applied plan" in results[-1].out
    assert _rows(empty_database_url, "SELECT count(*) FROM whitelabel_models")[0][0] == 3
    assert _rows(empty_database_url, "SELECT count(*) FROM whitelabel_posts")[0][0] == 4
    assert _rows(empty_database_url, "SELECT count(*) FROM whitelabel_media")[0][0] == 7


def test_product_images_quick_start(cli, monkeypatch, tmp_path, empty_database_url):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    results = run_quick_start("product-images", cli, monkeypatch, tmp_path)
    init = results[0].out
    assert "added column product_images.size_bytes" in init and "added column product_images.etag" in init
    assert _rows(empty_database_url, "SELECT file_name, image_type FROM product_images ORDER BY file_name") == [
        ("products/p42/1kg/other-images/side.webp", "other-images"),
        ("products/p42/500g/hero-card/front.jpg", "hero-card"),
        ("products/p42/500g/info-card/back.png", "info-card"),
        ("products/p7/250g/hero-card/jar.jpg", "hero-card"),
    ]


def test_documents_quick_start(cli, monkeypatch, tmp_path, empty_database_url):
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    results = run_quick_start("documents", cli, monkeypatch, tmp_path)
    assert "created table documents" in results[0].out
    assert "skipped: nested_folder" in results[1].out
    assert _rows(empty_database_url, "SELECT slug, collection_count, document_count FROM doc_tenants ORDER BY slug") == [
        ("acme", 2, 3), ("globex", 1, 1)]
    assert _rows(empty_database_url, "SELECT name, document_count, files FROM doc_collections ORDER BY name")[0] == (
        "contracts", 2, ["https://files.example.com/acme/contracts/msa-2024.pdf",
                         "https://files.example.com/acme/contracts/nda.docx"])
    assert _rows(empty_database_url, "SELECT count(*) FROM documents")[0][0] == 4
