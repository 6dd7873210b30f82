"""Automatic fixes that keep what the code does: :func:`fix_many` applies ruff's safe fixes and its formatter,
then :func:`add_docstrings` documents the definitions it is told about (with the summaries
:func:`cai_lightning.constitution.docstrings.summary_docstring` writes). Nothing here runs the code: ruff rewrites
the text, the result's syntax tree is compared with what was intended."""

from __future__ import annotations

import ast
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence

from cai_lightning.constitution.checks import RUFF_RULES, SOURCE_LINE, parse_code, parses, run_ruff, write_sources


def fix_many(codes: Sequence[str], docstrings: Sequence[Mapping[str, str]] | None = None) -> list[str]:
    """The codes, in input order, with what can be fixed without changing what they do.

    Every code that parses gets ruff's *safe* fixes for the style check's rules (unused imports,
    trailing whitespace, semicolons, f-strings without placeholders, ...; never the unsafe ones such as
    deleting an unused variable) and then ruff's formatter. Then, when ``docstrings`` is given (one
    mapping per code, definition name → text), :func:`add_docstrings` documents the definitions named
    in the code's mapping, and the formatter runs again over the codes that got a docstring. Each ruff
    step is one process for all the codes. Code that does not parse comes back unchanged. Raises
    ValueError when ``docstrings`` does not have one mapping per code, RuntimeError when ruff fails.
    """
    if docstrings is not None and len(docstrings) != len(codes):
        raise ValueError(f"fix_many: {len(docstrings)} docstring mappings for {len(codes)} codes; give one per code")
    fixed = list(codes)
    sources = {i: code for i, code in enumerate(fixed) if parses(code)}
    # --fix-only: the fixes of --fix, without the report of what is left
    fix = ("check", "--isolated", "--no-cache", "--fix-only", "--select", RUFF_RULES)
    formatting = ("format", "--isolated", "--no-cache")
    for i, code in _ruff_rewrite(sources, fix, formatting).items():
        fixed[i] = code
    if docstrings is not None:
        documented = {i: add_docstrings(fixed[i], docstrings[i]) for i in sources}
        # The formatter decides the blank lines around a new docstring (one after a class's docstring,
        # one before a nested definition); the docstring itself is already laid out as it keeps it.
        changed = {i: code for i, code in documented.items() if code != fixed[i]}
        for i, code in _ruff_rewrite(changed, formatting).items():
            fixed[i] = code
    return fixed


def _ruff_rewrite(sources: Mapping[int, str], *commands: tuple[str, ...]) -> dict[int, str]:
    """``sources`` after the ruff ``commands`` that rewrite files in place, run in turn, each once over a
    folder holding them all."""
    if not sources:
        return {}
    with tempfile.TemporaryDirectory(prefix="cai-fix-") as folder:
        index = write_sources(folder, sources)
        for command in commands:
            run_ruff(*command, *(os.path.join(folder, name) for name in index))
        rewritten = {}
        for name, i in index.items():
            with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
                rewritten[i] = f.read()
    return rewritten


LINE_CHARS = 88
"""Columns a line may take: ruff's default, which both its E501 (the isolated style check) and its
formatter use. A docstring :func:`add_docstrings` writes is wrapped to fit."""

_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def add_docstrings(code: str, docstrings: Mapping[str, str]) -> str:
    """``code`` with a docstring for every function and class (at any depth) that has none and whose
    name is a key of ``docstrings``: ``\"\"\"text\"\"\"`` goes on a line of its own right after the
    header (above any comment that opens the body), at the indentation of the body's first statement.
    Nothing else changes: comments and layout stay as written.

    The text, whitespace collapsed and escaped where it must be (backslashes, quotes, unprintable
    characters), takes one line, or is wrapped where that line would be longer than :data:`LINE_CHARS`.
    Definitions whose body starts on the header's line (``def f(): return 1``) and empty texts are
    skipped. Returns ``code`` itself when it does not parse, when there is nothing to add, or when the
    result would be anything but ``code`` plus those docstrings (checked by comparing the syntax trees).
    """
    if not docstrings:
        return code
    try:
        tree = parse_code(code)
    except (SyntaxError, ValueError):
        return code
    lines = SOURCE_LINE.findall(code)
    targets = [
        node for node in ast.walk(tree)
        if isinstance(node, _DEFINITIONS) and docstrings.get(node.name, "").strip()
        and ast.get_docstring(node, clean=False) is None
    ]
    inserts: list[tuple[int, str]] = []  # (0-based line the docstring goes before, its lines with line ends)
    for node in targets:
        first = node.body[0]
        row = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])]) - 1
        indent = lines[row][: len(lines[row]) - len(lines[row].lstrip(" \t\f"))]
        # A compound statement always starts a line of its own; a simple one may follow the header's colon.
        if not getattr(first, "decorator_list", None) and first.col_offset != len(indent):  # ASCII: bytes = chars
            continue
        newline = lines[row][len(lines[row].rstrip("\r\n")):] or "\n"
        while row - 1 > node.lineno - 1 and lines[row - 1].strip(" \t\f\r\n")[:1] in ("", "#"):
            row -= 1  # above blank and comment lines: only they can lie between the header and the body
        literal = _docstring_lines(" ".join(docstrings[node.name].split()), indent)
        inserts.append((row, "".join(line + newline for line in literal)))
        value = ast.literal_eval("\n".join([literal[0].lstrip(" \t\f"), *literal[1:]]))
        node.body.insert(0, ast.Expr(ast.Constant(value)))  # the tree the result must have
    if not inserts:
        return code
    for row, text in sorted(inserts, reverse=True):  # bottom up: the rows above stay where they are
        lines.insert(row, text)
    result = "".join(lines)
    try:
        as_intended = ast.dump(parse_code(result)) == ast.dump(tree)
    except (SyntaxError, ValueError):
        as_intended = False
    return result if as_intended else code


def _docstring_lines(text: str, indent: str) -> list[str]:
    """A docstring holding ``text`` (one line, no line ends) as lines at ``indent``: one line when it
    fits in :data:`LINE_CHARS` columns, else wrapped at spaces with the closing quotes on their own line
    (the layout ruff's formatter keeps as it is)."""
    body = _escape_docstring(text)
    one_line = f'{indent}"""{body}"""'
    width = len(one_line.expandtabs(4))  # ruff counts a tab as 4 columns
    if width <= LINE_CHARS:
        return [one_line]
    # Wrapped short of the closing quotes' room too, so that the text takes two lines at least: ruff's
    # formatter would pull the quotes of a one-line text up onto its line, past the limit.
    room = max(LINE_CHARS - len(indent.expandtabs(4)) - 3, 40)  # a deep indent still gets a readable width
    wrapped = textwrap.wrap(body, room, initial_indent='"""', break_long_words=False, break_on_hyphens=False)
    return [indent + line for line in wrapped] + [indent + '"""']


def _escape_docstring(text: str) -> str:
    """``text`` (no line ends) as the inside of a triple-quoted literal that reads back as ``text``:
    backslashes doubled, unprintable characters as escapes, every third quote of a run of quotes and
    a trailing quote escaped so that the literal cannot close early. No whitespace is added."""
    out, quotes = [], 0
    for ch in text:
        quotes = quotes + 1 if ch == '"' else 0
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and quotes == 3:
            out.append('\\"')
            quotes = 0
        elif not ch.isprintable():
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    if out and out[-1] == '"':  # `"` then the closing quotes would read as the end of the literal
        out[-1] = '\\"'
    return "".join(out)
