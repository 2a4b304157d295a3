"""The documentation stays true: the MkDocs site builds strictly (no broken link, anchor
or page), every relative link of the repository's Markdown resolves (as GitHub renders
it), tables read the same on GitHub and on the site, and the catalogue guide works as
written — its spec is the shipped product-images catalogue, and its commands print what
the page says they print.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from reconciler.catalogue import load_catalogue
from reconciler.store.db import redact_url

from .shell import run_line

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
MARKDOWN = [ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "examples" / "catalogues" / "README.md",
            ROOT / "bench" / "README.md", *PAGES]
GUIDE = DOCS / "catalogues.md"


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


# --------------------------------------------------------------------------- the site


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason='MkDocs is not installed: python -m pip install -e ".[docs]"')
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for page in ("getting-started", "catalogues", "controller", "operations/large-buckets", "reference/cli"):
        assert (site / page / "index.html").is_file(), page
    assert not list(site.rglob("*.py")), "the hook and the screenshot script are not pages"


# --------------------------------------------------------------------------- links to the repository (docs/hooks.py)


@pytest.fixture
def repo(tmp_path):
    """A repository with a page and files beside docs/."""
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "examples" / "shop").mkdir(parents=True)
    (tmp_path / "examples" / "shop" / "reconciler.yaml").write_text("catalogue: product-images\n")
    return tmp_path


def rewrite(repo: Path, markdown: str, repository: str | None = None):
    return hooks.rewrite(markdown, repo / "docs" / "guide" / "page.md", repo / "docs", repo, repository)


def test_a_link_to_a_file_of_the_repository_points_there_on_the_site(repo):
    out = rewrite(repo, "See [the config](../../examples/shop/reconciler.yaml#L1).", "https://example.invalid/r/blob/HEAD")
    assert out.problems == []
    assert out.markdown == "See [the config](https://example.invalid/r/blob/HEAD/examples/shop/reconciler.yaml#L1)."


def test_without_a_repository_address_the_site_names_the_file(repo):
    out = rewrite(repo, "[the config](../../examples/shop/reconciler.yaml) and [`examples/shop/`](../../examples/shop/)")
    assert out.problems == []
    assert out.markdown == "the config (`examples/shop/reconciler.yaml`) and `examples/shop/`"


def test_a_link_to_a_missing_file_or_out_of_the_repository_is_a_problem(repo):
    out = rewrite(repo, "[a](../../examples/shop/nope.yaml) [b](../../../elsewhere.md) ![c](../../examples/shop/reconciler.yaml)")
    assert out.problems == [
        "../../examples/shop/nope.yaml: examples/shop/nope.yaml does not exist",
        "../../../elsewhere.md: leaves the repository",
        "../../examples/shop/reconciler.yaml: a picture outside docs/ is not on the site; put it in docs/",
    ]


def test_pages_web_addresses_and_code_blocks_are_left_to_mkdocs(repo):
    text = ("[a page](../index.md#top) [web](https://example.invalid/x) [here](#part)\n"
            "```md\n[an example](../../examples/nope.yaml)\n```\n")
    assert rewrite(repo, text) == hooks.Rewritten(text, [])


# --------------------------------------------------------------------------- links as GitHub renders them


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: the text lowercased, punctuation but
    hyphens and underscores dropped, spaces made hyphens, repeats numbered."""
    anchors: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
        slug = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN").replace(" ", "-")
        n = repeats.get(slug, 0)
        repeats[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def relative_links(markdown: str) -> list[str]:
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return [t for t in re.findall(r"\]\(([^()\s]+)\)", markdown) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_every_relative_link_resolves(path):
    text = path.read_text("utf-8")
    for link in relative_links(text):
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{path.relative_to(ROOT)}: {link} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in github_anchors(file.read_text("utf-8")), f"{path.relative_to(ROOT)}: {link}: no such heading"


@pytest.mark.parametrize("path", PAGES, ids=_ids(PAGES))
def test_table_cells_read_the_same_on_github_and_the_site(path):
    """GitHub splits a cell at a ``|`` even inside code, MkDocs shows ``\\|`` as written:
    a pipe in a cell is written ``&#124;`` inside ``<code>``."""
    for line in path.read_text("utf-8").splitlines():
        if line.startswith("|"):
            assert "\\|" not in line, line
            assert not any("|" in span for span in re.findall(r"`[^`]*`", line)), line


def test_the_readme_leaves_history_and_reference_to_the_pages():
    text = (ROOT / "README.md").read_text("utf-8")
    assert len(text.splitlines()) < 200
    for kept_out in ("issue 11", "serve.shards", "Measured", "| objects |"):
        assert kept_out not in text, kept_out
    for page in ("docs/getting-started.md", "docs/catalogues.md", "docs/controller.md", "docs/troubleshooting.md"):
        assert f"]({page})" in text, page


# --------------------------------------------------------------------------- the catalogue guide


def guide_spec() -> dict:
    """The spec the guide has the reader write: its ``# shop.yaml`` blocks, in order."""
    blocks = re.findall(r"```yaml\n(# shop\.yaml.*?)```", GUIDE.read_text("utf-8"), flags=re.S)
    assert len(blocks) == 3, "the guide writes shop.yaml in three parts"
    return yaml.safe_load("".join(blocks))


def test_the_guide_writes_the_shipped_product_images_catalogue(tmp_path):
    spec = tmp_path / "shop.yaml"
    spec.write_text(yaml.safe_dump(guide_spec(), sort_keys=False), "utf-8")
    assert load_catalogue(str(spec)).fingerprint == load_catalogue("product-images").fingerprint


def transcript() -> list[tuple[str, list[str]]]:
    """Every command typed in the guide's console blocks, with the output shown for it."""
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", GUIDE.read_text("utf-8"), flags=re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                steps[-1][1].append(line)
    return steps


def normalized(lines: list[str], database: str) -> list[str]:
    """Output as the page shows it: the example's own embedded database, and in place of
    what differs from run to run (plan ids, times) a mark; the migrations applied are the
    ones of the day, and only said to be applied."""
    text = "\n".join(line.rstrip() for line in lines).strip("\n").replace(database, "<database>")
    text = text.replace("embedded PostgreSQL in state/product-images/pgdata", "<database>")
    text = re.sub(r"\b(Plan|plan|Applied plan) [0-9a-f]{12}(?:[0-9a-f]{52})?\b", r"\1 <id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>", text)
    text = re.sub(r"applied (\d{4}_\w+\.sql(, )?)+\.", "applied <migrations>.", text)
    return text.splitlines()


def test_the_guide_runs_as_written(cli, monkeypatch, tmp_path, empty_database_url):
    """From a copy of the repository's examples, on a fresh database named by
    DATABASE_URL (which wins over the example's embedded one, as it would for a user)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "examples" / "catalogues" / "product-images" / "shop.yaml").write_text(
        yaml.safe_dump(guide_spec(), sort_keys=False), "utf-8")
    monkeypatch.setenv("DATABASE_URL", empty_database_url)
    steps = transcript()
    assert [command.split()[:2] for command, _ in steps][:4] == [
        ["export", "RECONCILER_CONFIG=examples/catalogues/product-images/reconciler.yaml"],
        ["python", "examples/catalogues/product-images/setup_platform.py"],
        ["export", "RECONCILER_CATALOGUE=examples/catalogues/product-images/shop.yaml"],
        ["reconciler", "explain"]]
    for command, shown in steps:
        r = run_line(command, cli, monkeypatch, tmp_path)
        assert r.code == 0, (command, r.err)
        database = redact_url(empty_database_url)
        assert normalized(r.out.splitlines(), database) == normalized(shown, database), command
