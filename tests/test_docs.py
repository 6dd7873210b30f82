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
