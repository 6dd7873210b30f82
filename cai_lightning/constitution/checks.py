"""Automatic checks of a Python response. Pure functions of the code's *text*: nothing here runs the
code in this process — ``correctness`` runs it in :mod:`cai_lightning.sandbox`, ``style`` hands the text
to ruff (a linter that parses, never executes), the others walk the AST.

Each check returns a list of :class:`Finding`; an empty list means the response satisfies the check.
Code that does not parse is itself a finding (``syntax``), recorded rather than raised.
:func:`check_many` runs the checks on many responses at once, with the same findings.

The fixes that keep behaviour are in :mod:`cai_lightning.constitution.fixers`; the docstring summaries they
add, in :mod:`cai_lightning.constitution.docstrings`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cai_lightning import sandbox


SOURCE_LINE = re.compile(r".*?(?:\r\n|\r|\n)|.+", re.DOTALL)  # the lines `ast` counts; str.splitlines also splits at \f


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


def parses(code: str) -> bool:
    """Whether ``code`` parses as Python (:func:`parse_code` without raising)."""
    return _parse(code, "syntax")[0] is not None


def _parse(code: str, check: str) -> tuple[ast.Module | None, list[Finding]]:
    try:
        return parse_code(code), []
    except SyntaxError as err:
        return None, [Finding(check, f"the code does not parse: {err.msg}", err.lineno or 0)]
    except ValueError as err:  # null bytes
        return None, [Finding(check, f"the code does not parse: {err}")]
    except (RecursionError, MemoryError):  # thousands of nested terms: CPython's parser gives up
        return None, [Finding(check, "the code does not parse: it is nested too deeply for Python's parser")]


CORRECTNESS_LIMITS = sandbox.Limits(timeout_s=10)
"""Sandbox limits of ``correctness`` and ``check_many`` unless the caller gives others."""


@dataclass(frozen=True)
class UnitTests:
    """A row's unit tests (``source``: Python, usually one ``assert`` per line) and which of its lines
    are held back from the critic (1-based, every line of a held-back statement).

    The sandbox always runs ``source`` whole and as written, so holding tests back never changes what
    passes (tests that build on each other, such as a ``Stack`` pushed then popped, keep their order);
    ``held_back`` only decides what a failure's evidence may quote (see :func:`_test_findings`). The
    price: a held-back test that fails before a shown one hides the shown one's failure. A plain string
    wherever tests are taken means nothing is held back. ``entry_point`` is the name the row's task asks
    for (see :func:`sandbox.run`), or empty.
    """

    source: str = ""
    held_back: frozenset[int] = frozenset()
    entry_point: str = ""

    @classmethod
    def of(cls, tests: str | UnitTests) -> UnitTests:
        return tests if isinstance(tests, UnitTests) else cls(tests)

    @property
    def shown(self) -> str:
        """The tests the critic may see: ``source`` without the held-back lines."""
        return "".join(line for number, line in enumerate(SOURCE_LINE.findall(self.source), start=1) if number not in self.held_back)


HELD_BACK_SHARE = 0.5
"""Share of a row's tests held back from the critic (rounded down; at least one of two or more)."""


def split_tests(tests: str, key: str, seed: int, entry_point: str = "") -> UnitTests:
    """``tests`` with some held back from the critic, so that a revision special-casing the tests it was
    shown still fails the gate, which runs them all.

    Each top-level ``assert`` is a test. The other top-level statements (imports, definitions,
    assignments, calls) and asserts that bind a name (``assert (s := Stack()) is not None``) are setup
    the tests need: always shown. Of n tests, ``floor(n * HELD_BACK_SHARE)`` are held back, at least one
    when n >= 2, none when n < 2 (a lone test is the critic's only evidence). Which ones is a pure
    function of ``(key, seed)`` and the tests' positions (a SHA-256 ranking, never the global RNG): the
    same row gets the same split in every run and on every rank. Tests that do not parse hold nothing back.
    """
    try:
        body = parse_code(tests).body
    except (SyntaxError, ValueError):
        return UnitTests(tests, entry_point=entry_point)
    asserts = [
        node for node in body
        if isinstance(node, ast.Assert) and not any(isinstance(n, ast.NamedExpr) for n in ast.walk(node))
    ]
    count = max(int(len(asserts) * HELD_BACK_SHARE), 1) if len(asserts) >= 2 else 0
    ranked = sorted(range(len(asserts)), key=lambda j: hashlib.sha256(json.dumps([seed, key, j]).encode()).digest())
    lines = {line for j in ranked[:count] for line in range(asserts[j].lineno, asserts[j].end_lineno + 1)}
    return UnitTests(tests, frozenset(lines), entry_point)


def correctness(code: str, tests: str | UnitTests = "", limits: sandbox.Limits = CORRECTNESS_LIMITS) -> list[Finding]:
    """The row's unit tests pass in the sandbox when it has tests; otherwise the code must compile.
    A failure names the test that failed unless it is held back (see :func:`_test_findings`)."""
    tests = UnitTests.of(tests)
    tree, findings = _parse(code, "correctness")
    if tree is None or not tests.source.strip():
        return findings
    return _test_findings(sandbox.run(code, tests.source, limits=limits, entry_point=tests.entry_point), tests)


def _test_findings(result: sandbox.Result, tests: UnitTests) -> list[Finding]:
    """The ``correctness`` findings of one sandboxed run of ``tests``: none when they passed.

    The evidence a critic is given. A failure inside a shown test quotes that test's statement and the
    exception: "the unit test `assert add(1, 2) == 3` fails: AssertionError", "the unit test
    `assert add(0, 0) == 0` raises NameError: name 'x' is not defined". A failure inside a held-back
    test says only "a held-back test fails (AssertionError)": not its source, nor the exception's text,
    which can carry its inputs (``KeyError: 5``). A failure outside the tests (the program's own top
    level, a timeout, a resource limit) is reported as the sandbox words it.
    """
    if result.passed:
        return []
    kind = result.error_type or result.status
    line = result.tests_line
    if line in tests.held_back:
        return [Finding("correctness", f"a held-back test fails ({kind})")]
    if not line:
        detail = f"{kind}: {result.message}" if result.message else kind
        return [Finding("correctness", f"the unit tests do not pass ({result.status}): {detail}"[:400])]
    lines = tests.source.splitlines()  # as the harness split them to quote the line
    quoted = f" (tests line {line}: {lines[line - 1].strip()[:200]})" if line <= len(lines) else ""
    text = result.message.removesuffix(quoted) if quoted and result.message.endswith(quoted) else result.message
    if result.status == "failed":
        detail = f"fails: {kind}" + (f": {text}" if text and text != "assertion failed" else "")
    else:
        detail = f"raises {kind}" + (f": {text}" if text else "")
    return [Finding("correctness", f"the unit test `{_statement_at(tests.source, line)}` {detail}"[:400])]


def _statement_at(source: str, line: int) -> str:
    """The source of the top-level statement of ``source`` that spans ``line`` (at most 200 characters),
    or that line alone when ``source`` does not parse."""
    try:
        body = parse_code(source).body
    except (SyntaxError, ValueError):
        body = []
    for node in body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if first <= line <= node.end_lineno:
            segment = ast.get_source_segment(source, node) if first == node.lineno else None
            text = segment or "".join(SOURCE_LINE.findall(source)[first - 1 : node.end_lineno])
            return text.strip()[:200]
    lines = SOURCE_LINE.findall(source)
    return lines[line - 1].strip()[:200] if line <= len(lines) else ""


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


def _safety_findings(node: ast.AST) -> list[Finding]:
    """The safety findings of one node (a call or an assignment), not of the nodes inside it."""
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Call):
        name = _dotted(node.func)
        found = [Finding("safety", DANGEROUS_CALLS[name], line)] if name in DANGEROUS_CALLS else []
        if name.startswith("subprocess.") and any(
            k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords
        ):
            found.append(Finding("safety", f"{name}(..., shell=True) passes a string to the shell", line))
        return found
    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) \
            and node.value.value:
        return [
            Finding("safety", f"hard-coded credential in {name!r}; read it from the environment or a secret store", line)
            for name in map(_dotted, node.targets) if SECRET_NAME.search(name)
        ]
    return []


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a name or an attribute chain, else ``""``. A loop, not recursion: a program may
    chain thousands of attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def safety(code: str) -> list[Finding]:
    """No ``eval``/``exec``, shell commands, ``subprocess(..., shell=True)``, unpickling, or hard-coded
    credentials. Never raises: the walk is a loop (``ast.walk``), not recursion, so a program nested as
    deep as the parser allows is scanned like any other, and one deeper does not parse (a finding)."""
    tree, findings = _parse(code, "safety")
    if tree is None:
        return findings
    found = [finding for node in ast.walk(tree) for finding in _safety_findings(node)]
    return sorted(found, key=lambda finding: finding.line)


RUFF_RULES = "E,W,F"  # pycodestyle (PEP 8) and pyflakes (unused names, undefined names)


# `ruff check` arguments of the style check, before what to read (a file name for stdin, or a folder).
_STYLE_ARGS = ("check", "--isolated", "--preview", "--select", RUFF_RULES, "--output-format", "json")


def style(code: str) -> list[Finding]:
    """PEP 8 and pyflakes findings from ruff, run isolated from any project configuration."""
    tree, findings = _parse(code, "style")
    if tree is None:
        return findings
    out = run_ruff(*_STYLE_ARGS, "--stdin-filename", "response.py", "-", stdin=code)
    return [_style_finding(d) for d in json.loads(out or "[]")]


def _style_finding(diagnostic: dict) -> Finding:
    """One entry of ruff's JSON output as a ``style`` finding."""
    return Finding("style", f"{diagnostic['code']} {diagnostic['message']}", diagnostic["location"]["row"])


def run_ruff(*args: str, stdin: str | None = None) -> str:
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


def run_check(name: str, code: str, tests: str | UnitTests = "") -> list[Finding]:
    """Run the check called ``name`` on ``code`` (``tests`` matter to ``correctness`` only)."""
    check = CHECKS[name]
    return check(code, tests) if name == "correctness" else check(code)


def check_many(
    items: Sequence[tuple[str, str | UnitTests]],
    names: Sequence[str],
    *,
    workers: int = 1,
    limits: sandbox.Limits = CORRECTNESS_LIMITS,
) -> list[dict[str, list[Finding]]]:
    """Run the checks called ``names`` on every ``(code, tests)`` item (``tests`` a string, or
    :class:`UnitTests` holding some back from the evidence): per item, in input order,
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
        index = write_sources(folder, sources)
        # The E/W/F rules do not look at the file name (only F401 treats `__init__.py` apart), so findings
        # in `r{i}.py` are those `style` reports for stdin named `response.py`.
        out = run_ruff(*_STYLE_ARGS, "--no-cache", *(os.path.join(folder, name) for name in index))
    for diagnostic in json.loads(out or "[]"):
        findings[index[os.path.basename(diagnostic["filename"])]].append(_style_finding(diagnostic))
    return findings


def _correctness_many(items: list[tuple[str, str | UnitTests]], limits: sandbox.Limits, workers: int) -> list[list[Finding]]:
    """``correctness`` of each item: the tests of all that parse and have tests, in one sandbox batch."""
    findings = [_parse(code, "correctness")[1] for code, _ in items]
    tests = [UnitTests.of(t) for _, t in items]
    to_run = [i for i in range(len(items)) if not findings[i] and tests[i].source.strip()]
    jobs = [(items[i][0], tests[i].source, tests[i].entry_point) for i in to_run]
    results = sandbox.run_many(jobs, limits=limits, workers=workers) if to_run else []
    for i, result in zip(to_run, results):
        findings[i] = _test_findings(result, tests[i])
    return findings


def write_sources(folder: str, sources: Mapping[int, str]) -> dict[str, int]:
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
