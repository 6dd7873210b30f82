"""Every relative link of the README and docs/ resolves: the file exists and, with ``#anchor``, has a heading
of that anchor (GitHub's rule: lowercase, punctuation dropped, spaces to ``-``, ``-1``, ``-2`` on repeats)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for line in _outside_fences(page.read_text()):
        heading = re.match(r"#+ +(.*?) *#*$", line)
        if heading:
            anchor = re.sub(r"[^a-z0-9 _-]", "", heading.group(1).lower()).replace(" ", "-")
            found.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
            seen[anchor] = seen.get(anchor, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in _outside_fences(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and (linked.is_dir() or anchor not in anchors(linked)):
                broken.append(f"{target}: no heading #{anchor} in {path or page.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top, and more!\n## Top, and more!\n")
    page = tmp_path / "b.md"
    page.write_text("[x](a.md#top-and-more-1) [y](a.md#nowhere) [z](missing.md) [w](https://example.org)\n"
                    "```\n[v](inside-a-fence.md)\n```\n")
    assert broken_links(page) == ["a.md#nowhere: no heading #nowhere in a.md", "missing.md: no such file"]


def _where_things_live() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Where things live")
    return text[start:text.index("\n## ", start + 1)]


def test_where_things_live_names_every_module_and_only_paths_that_exist():
    """The README's table of where things live matches the tree: every module of the package is named in it
    (by its path, or by its file name beside its package's first module), and every path it names exists."""
    section = _where_things_live()
    named = set(re.findall(r"`([^`\s]+\.(?:py|yaml|jsonl|md))`", section))
    modules = [p.relative_to(ROOT).as_posix() for p in (ROOT / "cai_lightning").rglob("*.py")]
    trivial = {"cai_lightning/__init__.py", "cai_lightning/__main__.py", "cai_lightning/data/__init__.py",
               "cai_lightning/constitution/__init__.py"}
    missing = [m for m in modules if m not in trivial and m not in named and m.rsplit("/", 1)[1] not in named]
    assert missing == [], f"modules the README's 'Where things live' does not name: {missing}"
    absent = [p for p in named if "/" in p and "*" not in p and not (ROOT / p).exists()]
    assert absent == [], f"paths the README's 'Where things live' names that do not exist: {absent}"
