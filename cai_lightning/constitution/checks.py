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
import hashlib
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
        return "".join(line for number, line in enumerate(_LINE.findall(self.source), start=1) if number not in self.held_back)


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
            text = segment or "".join(_LINE.findall(source)[first - 1 : node.end_lineno])
            return text.strip()[:200]
    lines = _LINE.findall(source)
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
        index = _write_sources(folder, sources)
        # The E/W/F rules do not look at the file name (only F401 treats `__init__.py` apart), so findings
        # in `r{i}.py` are those `style` reports for stdin named `response.py`.
        out = _ruff(*_STYLE_ARGS, "--no-cache", *(os.path.join(folder, name) for name in index))
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


SUMMARY_CHARS = 100
"""Longest sentence :func:`summary_docstring` writes, its period included. A longer description gives
way to a shorter whole sentence (see there), never to a cut one."""

# A sentence ends at . ! or ? before whitespace and a capital, a digit, a code span, a quote or a
# bracket, unless the stop belongs to "e.g." or "i.e."; after an ellipsis, only before a capital
# ("yields 2, 3, 5, ... (by trial division)" goes on).
_SENTENCE_END = re.compile(
    r"""(?<!\be\.g\.)(?<!\bi\.e\.)(?<!\.\.\.)(?<=[.!?])\s+(?=[A-Z0-9`'"(\[])|(?<=\.\.\.)\s+(?=[A-Z])"""
)
# What an instruction calls the definition it asks for ("a recursive Python function", "a dataclass").
_KINDS = re.compile(
    r"\b(?:function|generator|decorator|factory|manager|helper|method|closure|class|dataclass|exception|iterator)\b",
    re.IGNORECASE,
)
_CLASS_KINDS = re.compile(r"\b(?:class|dataclass|exception)\b", re.IGNORECASE)
_WORD = r"(?:(?!(?:that|which|to)\s)[\w-]+\s+)"  # one word of the kind ("recursive"), not the link
# A definition, after a request verb or "and": "Write a Python function `name(args)`", "and a function
# `name(args)`", "Write `name(args)`", "Write a function name(args)", or an unnamed "Write a Python
# function" that says next what it does.
_DEFINITION = re.compile(
    r"\b(?P<verb>write|implement|create|define|generate|develop|design|and|plus)\s+(?:"
    rf"(?P<unnamed>(?:an?\s+)?{_WORD}{{0,3}}?function)(?=\s+(?:that|which|to)\s)"
    rf"|(?P<kind>(?:an?\s+)?{_WORD}{{0,4}}?)"
    r"(?:`(?P<name>[A-Za-z_]\w*)(?:\([^`]*\))?`|(?P<bare>[A-Za-z_]\w*)\([^()`]*\)))",
    re.IGNORECASE,
)
# What links a definition to what it does: "that returns", "which recursively flattens", "returning",
# "to compute", "in Python: return".
_LINK = re.compile(
    r"(?:\s+in\s+Python)?(?:\s+\([^()]*\))?(?:"
    r"\s+(?:that|which)\s+(?P<adverbs>(?:\w+ly\s+)*)(?P<verb>[a-z]+)\b"
    r"|\s+(?P<participle>returning|yielding|representing|implementing)\b"
    r"|\s+to\s+(?P<base>[a-z]+)\b"
    r"|:\s+(?P<command>[a-z]+)\b)"
)
# First words of the request itself, not of a description of the code.
_REQUESTS = frozenset({"write", "implement", "create", "define", "generate", "develop", "design", "given", "use", "using"})
# Words that start a subordinate clause: a verb coordinated after one may be that clause's.
_SUBORDINATORS = frozenset({
    "which", "that", "who", "whose", "where", "when", "while", "if", "unless", "until", "so", "because", "once",
})
_IMPERATIVE_VERBS = frozenset(
    "accept add alternate append apply build calculate call capitalize check clamp classify collapse collect "
    "combine compare compress compute consume convert count cycle decode delete discard draw drop duplicate emit "
    "encode escape evaluate expand express extract fill filter find flatten flip follow format group hide ignore "
    "increment insert interpret invert join keep lowercase make map mark mask merge multiply normalize pad parse "
    "preserve print produce raise read record remove repeat replace rescale restore return reverse rotate round "
    "scale skip sort spell split square stop store strip subtract sum swap take track translate trim turn update "
    "uppercase validate verify walk wrap yield".split()
)
"""Verbs put in the imperative after "and", "or", "but", "then", "otherwise" or a comma ("takes a list
and returns" → "Take a list and return"), where the same word could be a noun ("keys and counts");
the verb right after "that"/"which" always is."""
# A parenthesis that instructs the programmer ("(do not use `math.isqrt`)") instead of describing.
_INSTRUCTION_ASIDE = re.compile(r"\s+\((?:do not|don't|use|hint|note)\b[^()]*\)", re.IGNORECASE)
# A parenthesis the sentence reads as well without: after a word, before the end, a punctuation mark
# or a word (not an operator: "(a * x) % m"), and not an alternative ("(or non-increasing ...)").
_ASIDE = re.compile(
    r"""(?<=[\w`'"]) \((?!or |and |unless |except )[^()]*(?:\([^()]*\)[^()]*)*\)(?=$|[,.;:]|\s[\w`'"])"""
)
# A trailing ", using X", ", in order", ", keeping Y": detail the main clause is whole without.
_MODIFIER = re.compile(r"(?:\w+ing|in|using|without|with|by|as|from|for|e\.g\.)\s")
# Ends of a clause that a colon completes ("in this order: ..."): no sentence without what follows.
_FORWARD = re.compile(r"(?:this order|as follows|the following|these|this form|like this)$", re.IGNORECASE)
# Words pointing back to another definition of the same sentence ("and `multipliers(n)` returning a
# list of n such functions").
_ANAPHORA = re.compile(r"\b(?:such \w+s|those|these)\b")
_QUOTE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])|\"")  # a quote, not an apostrophe ("Heron's")


def summary_docstring(instruction: str, name: str | None = None) -> str:
    """The summary line of a docstring for the definition a task instruction asks for: a whole sentence
    saying what it does, at most :data:`SUMMARY_CHARS` characters, or "" when the instruction does not
    give one. Never the request itself, never a sentence cut short.

    The sentence comes from the first sentence of ``instruction`` that asks for a definition (of
    ``name``, when given; with ``name`` None, the sentence must ask for one definition only) and says
    what it does after "that"/"which", a participle, "to" or "in Python:":

    - a function is described in the imperative, as PEP 257 asks: "Write a Python function
      `count_consonants(text)` that returns how many consonants `text` contains." → "Return how many
      consonants `text` contains."; "that checks whether" → "Check whether", "which computes" →
      "Compute", "returning X" → "Return X", and so are the verbs it coordinates ("takes a list and
      returns" → "Take a list and return");
    - a class is described by what it is or does, in the third person: "that implements a LIFO stack
      with push and pop" → "A LIFO stack with push and pop.", "that counts hashable items" → "Counts
      hashable items."; one given only by its methods or fields ("with methods `area()` and ...") gets "".

    A description longer than :data:`SUMMARY_CHARS` gives way, in turn, to the same sentence without
    its parentheses, without its trailing modifiers (", keeping the order", ", using `heapq`"), then
    to its first clause (up to "; " or ": "); when none fits, "". So does a description that refers to
    the task's example input, starts with a request verb ("Use ...", "Implement ..."), runs into a
    second definition, or has a verb the imperative cannot be told for ("... when `b` is zero, and
    returns ...": whose verb is it?).
    """
    for sentence in _SENTENCE_END.split(" ".join(instruction.split())):
        definitions = [found for found in _DEFINITION.finditer(sentence) if _is_definition(found, sentence)]
        if name is None and len(definitions) > 1:
            return ""
        for k, found in enumerate(definitions):
            defined = found["name"] or found["bare"]
            if name is not None and name != defined and (defined or len(definitions) > 1):
                continue
            if k + 1 < len(definitions):
                return ""  # what it does runs into the next definition
            is_class = _CLASS_KINDS.search(found["kind"] or found["unnamed"] or "") is not None
            summary = _summary(sentence[found.end():], is_class)
            return "" if k and _ANAPHORA.search(summary) else summary
    return ""


def _is_definition(found: re.Match, sentence: str) -> bool:
    """Whether a :data:`_DEFINITION` match asks for a definition: it names a kind ("and a class `C`"),
    or it follows a request verb at once ("Write `f(x)`"), or "and `f(x)`" says next what it does."""
    if found["unnamed"] or _KINDS.search(found["kind"]):
        return True
    if found["kind"]:
        return False  # "generate every string of `pairs`"
    return found["verb"].lower() not in ("and", "plus") or _LINK.match(sentence, found.end()) is not None


def _summary(rest: str, is_class: bool) -> str:
    """The summary of a definition from what follows its name in the sentence (``rest``), or ""."""
    link = _LINK.match(rest)
    if link is None:
        return ""
    phrase = _INSTRUCTION_ASIDE.sub("", rest[link.end():])
    if is_class:
        verb = link["verb"] or link["participle"] or ""
        if verb in ("implements", "represents", "models", "implementing", "representing"):
            return _fitting(phrase, imperative=False) if re.match(r"\s+an?\s", phrase) else ""
        if link["verb"] and _base_form(verb) and verb not in ("is", "has"):
            return _fitting(link["adverbs"] + verb + phrase, imperative=False)
        return ""
    if link["verb"]:
        verb = _base_form(link["verb"])
    else:
        verb = {"returning": "return", "yielding": "yield"}.get(link["participle"], link["base"] or link["command"])
    return _fitting((link["adverbs"] or "") + verb + phrase, imperative=True) if verb else ""


def _fitting(phrase: str, imperative: bool) -> str:
    """The first of ``phrase``'s whole sentences, longest first, that fits :data:`SUMMARY_CHARS`."""
    bare = _ASIDE.sub(lambda m: m[0] if _inside_quotes(phrase, m.start()) else "", phrase)
    for candidate in (phrase, bare, *_without_modifiers(bare), _first_clause(bare)):
        sentence = _finish(candidate, imperative)
        if sentence and len(sentence) <= SUMMARY_CHARS:
            return sentence
    return ""


def _finish(phrase: str, imperative: bool) -> str:
    """``phrase`` as a sentence: capitalized, ending in a period; "" when it is none to write."""
    phrase = _imperative(phrase.strip()) if imperative else phrase.strip()
    if not phrase or phrase.split(" ")[0].lower() in _REQUESTS or re.search(r"\bexample\b", phrase, re.IGNORECASE):
        return ""
    phrase = phrase[0].upper() + phrase[1:].rstrip(" ,;:")
    return phrase if phrase.endswith(".") else phrase + "."


def _imperative(phrase: str) -> str:
    """``phrase``, which starts with a verb in the imperative, with the verbs coordinated to it in the
    imperative too; "" when such a verb comes after a subordinate clause opens (it may be the clause's)."""
    words = phrase.split(" ")
    subordinate, depth = False, 0
    for i, word in enumerate(words):
        bare = word.rstrip(".,;:)")
        verb = _base_form(bare.lower())
        prev = words[i - 1] if i else ""
        coordinated = prev in ("and", "or", "but", "then", "otherwise") or prev.endswith(",")
        if depth == 0 and coordinated and verb.split("-")[-1] in _IMPERATIVE_VERBS and (
            prev == "then" or i + 1 < len(words) and words[i + 1] != "of"  # not "... and counts." / "counts of"
        ):
            if subordinate:
                return ""
            words[i] = verb + word[len(bare):]
        depth += word.count("(") - word.count(")")
        subordinate = subordinate or depth == 0 and (word.lower() in _SUBORDINATORS or word.endswith((";", ":")))
    return " ".join(words)


def _base_form(word: str) -> str:
    """The base form of a verb in the third person singular ("returns" → "return", "applies" → "apply",
    "matches" → "match"), or "" when ``word`` cannot be one (it does not end in a single "s")."""
    irregular = {"has": "have", "does": "do", "goes": "go", "caches": "cache"}
    if word in irregular:
        return irregular[word]
    if len(word) < 4 or not word.endswith("s") or word.endswith(("ss", "us", "is")):
        return ""
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zzes", "oes")):
        return word[:-2]
    return word[:-1]


def _without_modifiers(phrase: str) -> list[str]:
    """``phrase`` without its trailing modifiers (", keeping the order", ", using `heapq`"), one more
    dropped each time, longest first; what is left is the main clause with less detail, still a whole
    sentence."""
    shorter = []
    while True:
        cut = max(
            (i for i in range(len(phrase)) if phrase.startswith(", ", i) and not _inside_quotes(phrase, i)
             and phrase.count("(", 0, i) == phrase.count(")", 0, i)),
            default=-1,
        )
        if cut < 0 or not _MODIFIER.match(phrase, cut + 2):
            return shorter
        phrase = phrase[:cut]
        shorter.append(phrase)


def _first_clause(phrase: str) -> str:
    """``phrase`` up to its first "; " or ": " outside brackets, code spans and quotes, when what comes
    before is a whole sentence; else ""."""
    depth = 0
    for i, ch in enumerate(phrase):
        depth += (ch in "([") - (ch in ")]")
        if ch in ";:" and phrase.startswith(" ", i + 1) and depth == 0 and not _inside_quotes(phrase, i):
            clause = phrase[:i].rstrip(" ,")
            return "" if _FORWARD.search(clause) else clause
    return ""


def _inside_quotes(text: str, i: int) -> bool:
    """Whether position ``i`` of ``text`` lies inside a code span or a quoted string."""
    return text.count("`", 0, i) % 2 == 1 or len(_QUOTE.findall(text, 0, i)) % 2 == 1
