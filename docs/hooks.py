"""MkDocs hook: links from the pages to the repository's files outside docs/.

The pages are read in two places: in the repository (GitHub renders them, and a link
such as ``[the example](../examples/catalogues/README.md)`` opens the file) and on the
built site, which holds only docs/. MkDocs checks the links between pages, but a link
that leaves docs/ is a warning to it when it names a file and goes unchecked when it
names a folder. This hook takes those links over: each must name a file or folder that
exists in the repository (else a warning, so ``mkdocs build --strict`` fails), and on
the site it points to ``extra.repository`` in mkdocs.yml when that is set, or is shown
as the path it names. In the repository the links stay as written.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

log = logging.getLogger("mkdocs.hooks.repository_links")

# Fenced code blocks hold examples, not links.
_FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.M | re.S)
# An inline link or image; its text may hold one level of brackets.
_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\((?P<target>[^()\s]+)\)")


@dataclass(frozen=True)
class Rewritten:
    markdown: str
    problems: list[str]


def rewrite(markdown: str, page: Path, docs: Path, root: Path, repository: str | None) -> Rewritten:
    """``markdown`` of the page at ``page`` with its links out of ``docs`` (inside
    ``root``, the repository) pointing to ``repository``, or written as the path they
    name; and what is wrong with any of them."""
    problems: list[str] = []

    def one(link: re.Match) -> str:
        target = link["target"]
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path or target.startswith("/"):
            return link[0]  # a web address, an anchor on this page, or an absolute link (MkDocs warns)
        path = (page.parent / unquote(parts.path)).resolve()
        if path.is_relative_to(docs):
            return link[0]  # a page or picture of the site: MkDocs checks it
        if not path.is_relative_to(root):
            problems.append(f"{target}: leaves the repository")
            return link[0]
        if not path.exists():
            problems.append(f"{target}: {path.relative_to(root).as_posix()} does not exist")
            return link[0]
        name = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        if link["bang"]:
            problems.append(f"{target}: a picture outside docs/ is not on the site; put it in docs/")
            return link[0]
        if repository:
            anchor = f"#{parts.fragment}" if parts.fragment else ""
            return f"[{link['text']}]({repository.rstrip('/')}/{quote(name)}{anchor})"
        shown = link["text"].strip("`").rstrip("/")
        return link["text"] if shown == name.rstrip("/") else f"{link['text']} (`{name}`)"

    out, at = [], 0
    for fence in _FENCE.finditer(markdown):
        out.append(_LINK.sub(one, markdown[at:fence.start()]))
        out.append(fence[0])
        at = fence.end()
    out.append(_LINK.sub(one, markdown[at:]))
    return Rewritten("".join(out), problems)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (MkDocs' signature)
    docs = Path(config.docs_dir).resolve()
    root = Path(config.config_file_path).resolve().parent
    result = rewrite(markdown, docs / page.file.src_path, docs, root, config.extra.get("repository"))
    for problem in result.problems:
        log.warning("Doc file '%s' links to the repository: %s", page.file.src_uri, problem)
    return result.markdown
