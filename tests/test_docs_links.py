"""Every `docs/<page>.md#<section>` the code, the tests and the docs cite names a section that
exists: comments cite the contract by section (docs/architecture.md), so a renamed heading
must not leave them pointing nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
#: a page and section as cited in code and docs; a citation may wrap after a hyphen in a
#: comment, which is why the section is read up to the first character that cannot be in one
CITE = re.compile(r"(?:docs/)?([a-z][a-z0-9\-]*\.md)#([a-z0-9][a-z0-9\-_]*)")
LOCAL = re.compile(r"\]\(#([a-z0-9][a-z0-9\-_]*)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to
    hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def sections(page: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def cited() -> list[tuple[str, str, str]]:
    """(file, page, section) of every citation in phh_engine/, phh_tui/, tests/, docs/ and
    the README."""
    files = [*REPO.glob("phh_engine/**/*.py"), *REPO.glob("phh_tui/**/*.py"),
             *REPO.glob("tests/*.py"), *DOCS.glob("*.md"), REPO / "README.md"]
    out = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        rel = str(f.relative_to(REPO))
        out += [(rel, m.group(1), m.group(2)) for m in CITE.finditer(text)
                if (DOCS / m.group(1)).is_file()]
        if f.parent == DOCS:
            out += [(rel, f.name, m.group(1)) for m in LOCAL.finditer(text)]
    return out


def test_docs_are_cited_by_section_somewhere() -> None:
    assert len(cited()) > 20  # the pattern still finds the citations


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_every_cited_section_exists(page: str) -> None:
    have = sections(DOCS / page)
    missing = sorted({(f, s) for f, p, s in cited() if p == page and s not in have})
    assert not missing, f"{page} has no section for: {missing}"
