"""Automatic checks of a Python response. Pure functions of the code's *text*: nothing here runs the
code in this process — ``correctness`` runs it in :mod:`cai_lightning.sandbox`, ``style`` hands the text
to ruff (a linter that parses, never executes), the others walk the AST.

Each check returns a list of :class:`Finding`; an empty list means the response satisfies the check.
Code that does not parse is itself a finding (``syntax``), recorded rather than raised.
:func:`check_many` runs the checks on many responses at once, with the same findings.

Automatic fixes that keep behaviour: :func:`fix_many` applies ruff's safe fixes and formatter, then
:func:`add_docstrings` documents the definitions it is told about.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cai_lightning import sandbox


@dataclass(frozen=True)
class Finding:
    """One violation: which check found it, a message a critic can quote, and the line (1-based, or 0)."""

    check: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def parse_code(code: str) -> ast.Module:
    """``ast.parse`` for code a model wrote, without its invalid escapes' warnings (a screenful per
    chunk of the stage otherwise)."""
    with sandbox.quiet_syntax_warnings():
        return ast.parse(code)


def _parse(code: str, check: str) -> tuple[ast.Module | None, list[Finding]]:
    try:
        return parse_code(code), []
    except SyntaxError as err:
        return None, [Finding(check, f"the code does not parse: {err.msg}", err.lineno or 0)]
    except ValueError as err:  # null bytes
        return None, [Finding(check, f"the code does not parse: {err}")]


CORRECTNESS_LIMITS = sandbox.Limits(timeout_s=10)
"""Sandbox limits of ``correctness`` and ``check_many`` unless the caller gives others."""


def correctness(code: str, tests: str = "", limits: sandbox.Limits = CORRECTNESS_LIMITS) -> list[Finding]:
    """The row's unit tests pass in the sandbox when it has tests; otherwise the code must compile."""
    tree, findings = _parse(code, "correctness")
    if tree is None or not tests.strip():
        return findings
    return _test_findings(sandbox.run(code, tests, limits=limits))


def _test_findings(result: sandbox.Result) -> list[Finding]:
    """The ``correctness`` findings of one sandboxed run of the tests: none when they passed."""
    if result.passed:
        return []
    detail = f"{result.error_type}: {result.message}" if result.message else (result.error_type or result.status)
    return [Finding("correctness", f"the unit tests do not pass ({result.status}): {detail}"[:400])]


# Calls that run strings as code or shell commands, or load pickles: dangerous with untrusted input.
DANGEROUS_CALLS = {
    "eval": "eval() runs arbitrary code",
    "exec": "exec() runs arbitrary code",
    "os.system": "os.system() runs a shell command",
    "os.popen": "os.popen() runs a shell command",
    "pickle.load": "pickle.load() can run arbitrary code from untrusted data",
    "pickle.loads": "pickle.loads() can run arbitrary code from untrusted data",
    "marshal.loads": "marshal.loads() on untrusted data is unsafe",
    "yaml.load": "yaml.load() without SafeLoader can build arbitrary objects",
}
SECRET_NAME = re.compile(r"(password|passwd|secret|api_?key|token|credential)", re.IGNORECASE)


class _SafetyVisitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def _flag(self, node: ast.AST, message: str) -> None:
        self.findings.append(Finding("safety", message, getattr(node, "lineno", 0)))

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        if name in DANGEROUS_CALLS:
            self._flag(node, DANGEROUS_CALLS[name])
        if name.startswith("subprocess.") and any(
            k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords
        ):
            self._flag(node, f"{name}(..., shell=True) passes a string to the shell")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) and node.value.value:
            for target in node.targets:
                name = _dotted(target)
                if SECRET_NAME.search(name):
                    self._flag(node, f"hard-coded credential in {name!r}; read it from the environment or a secret store")
        self.generic_visit(node)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def safety(code: str) -> list[Finding]:
    """No ``eval``/``exec``, shell commands, ``subprocess(..., shell=True)``, unpickling, or hard-coded credentials."""
    tree, findings = _parse(code, "safety")
    if tree is None:
        return findings
    visitor = _SafetyVisitor()
    visitor.visit(tree)
    return visitor.findings


RUFF_RULES = "E,W,F"  # pycodestyle (PEP 8) and pyflakes (unused names, undefined names)


# `ruff check` arguments of the style check, before what to read (a file name for stdin, or a folder).
_STYLE_ARGS = ("check", "--isolated", "--preview", "--select", RUFF_RULES, "--output-format", "json")


def style(code: str) -> list[Finding]:
    """PEP 8 and pyflakes findings from ruff, run isolated from any project configuration."""
    tree, findings = _parse(code, "style")
    if tree is None:
        return findings
    out = _ruff(*_STYLE_ARGS, "--stdin-filename", "response.py", "-", stdin=code)
    return [_style_finding(d) for d in json.loads(out or "[]")]


def _style_finding(diagnostic: dict) -> Finding:
    """One entry of ruff's JSON output as a ``style`` finding."""
    return Finding("style", f"{diagnostic['code']} {diagnostic['message']}", diagnostic["location"]["row"])


def _ruff(*args: str, stdin: str | None = None) -> str:
    """Run ruff with ``args`` and return its stdout. Raises RuntimeError, with ruff's stderr, when ruff
    itself fails: exit status 0 is success and 1 means findings (or, after ``--fix``, findings left)."""
    out = subprocess.run(
        [_ruff_binary(), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode not in (0, 1):
        raise RuntimeError(f"ruff failed: {out.stderr.strip()[:300]}")
    return out.stdout


def _ruff_binary() -> str:
    """The ruff executable of the installed ``ruff`` package (found even when its venv is not activated)."""
    try:
        from ruff.__main__ import find_ruff_bin

        return find_ruff_bin()
    except (ImportError, FileNotFoundError):
        path = shutil.which("ruff")
        if path is None:
            raise RuntimeError("the style check needs ruff: pip install ruff") from None
        return path


def documentation(code: str) -> list[Finding]:
    """Every function and class carries a docstring."""
    tree, findings = _parse(code, "documentation")
    if tree is None:
        return findings
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node) is None:
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            findings.append(Finding("documentation", f"{kind} {node.name!r} has no docstring", node.lineno))
    return findings


CHECKS: dict[str, Callable[..., list[Finding]]] = {
    "correctness": correctness,
    "safety": safety,
    "style": style,
    "documentation": documentation,
}
"""Check name (as written in a constitution file) → check."""


def run_check(name: str, code: str, tests: str = "") -> list[Finding]:
    """Run the check called ``name`` on ``code`` (``tests`` matter to ``correctness`` only)."""
    check = CHECKS[name]
    return check(code, tests) if name == "correctness" else check(code)


def check_many(
    items: Sequence[tuple[str, str]],
    names: Sequence[str],
    *,
    workers: int = 1,
    limits: sandbox.Limits = CORRECTNESS_LIMITS,
) -> list[dict[str, list[Finding]]]:
    """Run the checks called ``names`` on every ``(code, tests)`` item: per item, in input order,
    ``{name: findings}``, the very findings :func:`run_check` gives one item at a time (``correctness``
    under ``limits``). Batched for speed: ``style`` is one ruff process for every item that parses,
    ``correctness`` one :func:`sandbox.run_many` call running at most ``workers`` sandboxes at once, and
    the AST checks run here, item by item. Raises KeyError naming a check not in :data:`CHECKS`,
    RuntimeError when ruff fails, ValueError for ``workers < 1`` when there are tests to run."""
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise KeyError(f"unknown check(s) {', '.join(map(repr, unknown))}; the checks are {', '.join(CHECKS)}")
    items = list(items)
    results: list[dict[str, list[Finding]]] = [{} for _ in items]
    for name in names:
        if name == "style":
            found = _style_many([code for code, _ in items])
        elif name == "correctness":
            found = _correctness_many(items, limits, workers)
        else:
            found = [run_check(name, code, tests) for code, tests in items]
        for result, findings in zip(results, found):
            result[name] = findings
    return results


def _style_many(codes: list[str]) -> list[list[Finding]]:
    """``style`` of each code: one ruff process reads all that parse, each from a file of its own."""
    parsed = [_parse(code, "style") for code in codes]
    findings = [found for _, found in parsed]
    sources = {i: code for i, (code, (tree, _)) in enumerate(zip(codes, parsed)) if tree is not None}
    if not sources:
        return findings
    with tempfile.TemporaryDirectory(prefix="cai-style-") as folder:
        index = _write_sources(folder, sources)
        # The E/W/F rules do not look at the file name (only F401 treats `__init__.py` apart), so findings
        # in `r{i}.py` are those `style` reports for stdin named `response.py`.
        out = _ruff(*_STYLE_ARGS, "--no-cache", *(os.path.join(folder, name) for name in index))
    for diagnostic in json.loads(out or "[]"):
        findings[index[os.path.basename(diagnostic["filename"])]].append(_style_finding(diagnostic))
    return findings


def _correctness_many(items: list[tuple[str, str]], limits: sandbox.Limits, workers: int) -> list[list[Finding]]:
    """``correctness`` of each item: the tests of all that parse and have tests, in one sandbox batch."""
    findings = [_parse(code, "correctness")[1] for code, _ in items]
    to_run = [i for i, (code, tests) in enumerate(items) if not findings[i] and tests.strip()]
    results = sandbox.run_many([items[i] for i in to_run], limits=limits, workers=workers) if to_run else []
    for i, result in zip(to_run, results):
        findings[i] = _test_findings(result)
    return findings


def _write_sources(folder: str, sources: Mapping[int, str]) -> dict[str, int]:
    """Write each source ``i`` to ``folder/r{i}.py`` (UTF-8, line endings as they are); file name → ``i``.

    Ruff gets the files by name, never the folder: given a folder, it silently skips the files that a
    ``.gitignore`` matches when the temporary directory lies inside a git repository.
    """
    index = {}
    for i, code in sources.items():
        name = f"r{i}.py"
        with open(os.path.join(folder, name), "w", encoding="utf-8", newline="") as f:
            f.write(code)
        index[name] = i
    return index


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
    sources = {i: code for i, code in enumerate(fixed) if _parse(code, "fix")[0] is not None}
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
        index = _write_sources(folder, sources)
        for command in commands:
            _ruff(*command, *(os.path.join(folder, name) for name in index))
        rewritten = {}
        for name, i in index.items():
            with open(os.path.join(folder, name), encoding="utf-8", newline="") as f:
                rewritten[i] = f.read()
    return rewritten


LINE_CHARS = 88
"""Columns a line may take: ruff's default, which both its E501 (the isolated style check) and its
formatter use. A docstring :func:`add_docstrings` writes is wrapped to fit."""

_LINE = re.compile(r".*?(?:\r\n|\r|\n)|.+", re.DOTALL)  # the lines `ast` counts; str.splitlines also splits at \f
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
    lines = _LINE.findall(code)
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


SUMMARY_CHARS = 90
"""Longest :func:`summary_docstring`, its period included."""

# A sentence ends at . ! or ? before whitespace and a character that may start a sentence (not a
# lowercase letter), unless the stop belongs to "e.g." or "i.e.".
_SENTENCE_END = re.compile(r"(?<!\be\.g\.)(?<!\bi\.e\.)(?<=[.!?])\s+(?=[^a-z])")
# Words a summary cut short should not end on.
_DANGLING = frozenset({
    "a", "an", "the", "of", "to", "and", "or", "in", "into", "on", "onto", "for", "with", "by", "from", "as",
    "at", "than", "that", "which", "whose", "is", "are", "be", "each", "every", "its", "their", "how", "when",
    "where", "whether", "if", "not", "but", "while", "per", "between", "using", "all", "any", "some", "one",
})


def summary_docstring(instruction: str) -> str:
    """A docstring from a task instruction: its first sentence, whitespace collapsed, ending in a period,
    at most :data:`SUMMARY_CHARS` characters; "" for a blank instruction. "Write a function add(a, b)
    that returns the sum. Use ints." gives "Write a function add(a, b) that returns the sum.".

    A longer sentence is cut at its last clause break (a comma or semicolon outside code spans and
    parentheses) when that keeps most of it, else at a word boundary, without a dangling "of the", a
    lone operator or an open code span.
    """
    text = " ".join(instruction.split())
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(" .!?")
    if len(sentence) < SUMMARY_CHARS:
        return sentence + "." if sentence else ""
    limit = SUMMARY_CHARS - 1  # room for the period
    words = sentence[: limit + 1].split(" ")[:-1] or [sentence[:limit]]  # the last piece may be cut mid-word
    clauses = [k for k in range(len(words)) if words[k].endswith((",", ";")) and _balanced(words[: k + 1])]
    if clauses and len(" ".join(words[: clauses[-1] + 1])) >= 0.6 * limit:
        words = words[: clauses[-1] + 1]
    while len(words) > 1 and (
        words[-1].lower().strip(",;:") in _DANGLING or not any(c.isalnum() for c in words[-1]) or not _balanced(words)
    ):
        words.pop()
    return " ".join(words).rstrip(",;:-(.") + "."


def _balanced(words: list[str]) -> bool:
    """Whether the words close every code span and parenthesis they open."""
    text = " ".join(words)
    return text.count("`") % 2 == 0 and text.count("(") == text.count(")")
