"""Guards: what the gate refuses whatever a revision's score says, so that no critic, weak or strong, can
make a row worse. Real scraped rows carry no tests, and without them "correct" would mean "parses": an
emptied program has no findings at all. So a revision is compared with the response it would replace:

    static (pure, the syntax tree)          behaviour (both run in the sandbox, on the same inputs)
    empty: no code could be extracted       the script: run whole, stdin from the row's ``input`` field when
    cut_off: a reply cut at the token         it is stdin-shaped, the field's assignments run first when it
      limit (a fence never closed)            holds data; its stdout and how it ended must stay the same
    trivial: only imports, docstrings,      the probes: each top-level function called on arguments from the
      comments or ``pass``                    code's own example calls and from the ``input`` field; each
    language: the original is not Python      result (rendered from the plain values the judge holds, never
    dropped_name: a top-level function,       by the program) must stay the same
      class, method or name is gone
    changed_signature: its parameters       the agreed tests (when generated): calls whose correct result
    dropped_statements: the top-level         independent solutions agree on; a revision keeps those the
      statements a script runs                original passed
                                            A difference is allowed only under the correctness principle,
                                              where the original failed (an exception, a parse error, an
                                              agreed test) and the revision does not. A missing third-party
                                              module, ``input()`` at the end of its input, or a name the
                                              ``input`` field may define make the run *unknown*: compared as
                                              it ended, never counted as a failure.

When nothing could be compared (unknown runs, no probes), only a revision that is the original with
docstrings added or changed is accepted (``unverified`` otherwise). Nothing here executes code in this
process: behaviour is observed through :mod:`cai_lightning.sandbox`.

Why one long module: every guard of the gate, static and behavioural, with the behaviour comparison they
share, so that what the gate refuses is read in one place.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from cai_lightning import sandbox
from cai_lightning.constitution.checks import Finding, parse_code

GUARDS = (
    "empty", "cut_off", "trivial", "language", "dropped_name", "changed_signature", "dropped_statements",
    "behaviour_changed", "unverified",
)
"""Why a guard refused a candidate, in the order they are tried (counted in the stage's summary)."""

BEHAVIOUR_LIMITS = sandbox.Limits(timeout_s=5, cpu_s=3, memory_mb=512)
UNKNOWN_ERRORS = frozenset({"ModuleNotFoundError", "ImportError", "EOFError"})
"""How a run may end without saying the code is broken: a third-party module the sandbox lacks, ``input()``
with no input left; and a ``NameError`` when the row's ``input`` field may define the name (it holds
something that is neither assignments, nor the script's stdin, nor a literal to call with). A run ending
so is *unknown*; only another run ending the same way compares equal to it."""
MAX_PROBES = 8  # calls per code; each is a line of the judge's output

_FENCE_OPENED = re.compile(r"```[A-Za-z]*[ \t]*\n")


# ------------------------------------------------------------------------------------------------ static


def cut_off(reply: str) -> bool:
    """Whether a critic's reply was cut at the token limit: it opened a code fence it never closed (a
    model that fences its code closes the fence when it is done)."""
    opened = _FENCE_OPENED.search(reply)
    return opened is not None and "```" not in reply[opened.end():]


_ADDED_TESTS = re.compile(
    r"^(def (test|check)\w*\s*\(|class Test\w*\b|assert\b|# *(unit )?tests?( cases?)?( for .*)?:?\s*$)", re.IGNORECASE
)


def without_added_tests(original: str, revision: str) -> str:
    """``revision`` up to the tests a critic appended to it: from the first top-level line that starts a
    test function or class, an ``assert`` or a "# Unit tests" comment, and that the original does not
    have, everything is left out (what follows is the critic's own checking, not the code asked for; a
    reply cut at the token limit there is complete before it). A line at the left margin begins after the
    code above it has ended, so what is kept is whole; the guards then judge it like any candidate (a
    script statement left out with the tests is still a dropped statement)."""
    have = {line.strip() for line in original.splitlines()}
    lines = revision.splitlines(keepends=True)
    for number, line in enumerate(lines):
        if _ADDED_TESTS.match(line) and line.strip() not in have:
            kept = "".join(lines[:number]).rstrip()
            return kept + "\n" if kept else ""
    return revision


def static_refusal(original: str, revision: str, reply: str | None = None) -> str | None:
    """The first static guard that refuses ``revision`` as a replacement for ``original`` (see
    :data:`GUARDS`), or None. ``reply``: the critic's whole reply the revision was extracted from (for
    ``cut_off``), None for a fixer's candidate."""
    if not revision.strip():
        return "empty"
    if reply is not None and cut_off(reply):
        return "cut_off"
    new = _parse(revision)
    if new is not None and not _substance(new.body):
        return "trivial"
    old = _parse(original)
    if old is None:
        return "language" if not looks_like_python(original) else None  # broken Python: the checks decide
    if new is None:
        return None  # a revision that does not parse loses on the checks (correctness), not here
    old_api, new_api = interface(old), interface(new)
    if set(old_api) - set(new_api):
        return "dropped_name"
    if any(old_api[name] is not None and old_api[name] != new_api[name] for name in old_api):
        return "changed_signature"
    if script_statements(old) - script_statements(new):
        return "dropped_statements"
    return None


def _parse(code: str) -> ast.Module | None:
    try:
        return parse_code(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _substance(body: Sequence[ast.stmt]) -> bool:
    """Whether a module's statements do anything: more than imports, docstrings and ``pass``."""
    return any(not (isinstance(n, (ast.Import, ast.ImportFrom, ast.Pass)) or _is_docstring(n)) for n in body)


_OTHER_LANGUAGE = re.compile(
    r"^\s*(#include\b|using System|public |private |static void|function\s+\w+\s*\(|(var|let|const)\s+\w+\s*=|"
    r"console\.log|System\.out|fn \w+\(|package |func \w+\()|[;{]\s*$",
    re.MULTILINE,
)


def looks_like_python(code: str) -> bool:
    """Python, or Python with a syntax error, rather than another language (a JavaScript or C# answer to a
    Python instruction, as scraped data has): it parses, or no line reads like C-family code."""
    return _parse(code) is not None or len(_OTHER_LANGUAGE.findall(code)) < 2


def _signature(args: ast.arguments) -> tuple:
    """Parameters as a caller sees them: names, kinds and which have defaults (not the default values,
    which a fix may change: a mutable default made ``None``)."""
    return (
        tuple(a.arg for a in args.posonlyargs), tuple(a.arg for a in args.args), len(args.defaults),
        args.vararg is not None, tuple(a.arg for a in args.kwonlyargs),
        tuple(d is not None for d in args.kw_defaults), args.kwarg is not None,
    )


def interface(tree: ast.Module) -> dict[str, tuple | None]:
    """What other code may rely on: each top-level function (and each method, as ``Class.method``) with
    its :func:`_signature`, and each top-level class and assigned name (None: no signature)."""
    api: dict[str, tuple | None] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            api[node.name] = _signature(node.args)
        elif isinstance(node, ast.ClassDef):
            api[node.name] = None
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    api[f"{node.name}.{item.name}"] = _signature(item.args)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        api.setdefault(name.id, None)
    return api


def script_statements(tree: ast.Module) -> Counter:
    """The top-level statements a script runs, as a multiset a revision must keep: each top-level call
    by its callee (``print`` three times is three), each other statement by its kind (a loop, an ``if
    __name__ == "__main__":`` block). Definitions, imports, assignments and docstrings are not in it."""
    kinds: Counter = Counter()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom,
                             ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Pass)) or _is_docstring(node):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            kinds[f"call {_callee(node.value.func)}"] += 1
        else:
            kinds[type(node).__name__] += 1
    return kinds


def _callee(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id if isinstance(node, ast.Name) else "?", *reversed(parts)])


def documented_only(original: str, revision: str) -> bool:
    """Whether ``revision`` is ``original`` with docstrings added, changed or removed, and nothing else
    (layout and comments aside): behaviour unchanged by construction."""
    old, new = _parse(original), _parse(revision)
    return old is not None and new is not None and ast.dump(_without_docstrings(old)) == ast.dump(_without_docstrings(new))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]
    return tree


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Inputs:
    """What a row's code is run on: ``setup`` (the ``input`` field's assignments, run first), ``stdin``
    (the field when it is stdin-shaped and the code reads input), and probe ``calls``; ``open_names``:
    the field holds something else, which may define names the code uses (a ``NameError`` is unknown);
    ``expected``: ``(call, outcome)`` pairs a correct code gives (generated tests that independent
    solutions agree on, :mod:`cai_lightning.constitution.generated_tests`), their calls among ``calls``."""

    setup: str = ""
    stdin: str = ""
    calls: tuple[str, ...] = ()
    open_names: bool = False
    expected: tuple[tuple[str, str], ...] = ()

    def with_expected(self, expected: Mapping[str, str]) -> Inputs:
        """These inputs, probing also the calls of ``expected`` (call -> outcome), which they record."""
        if not expected:
            return self
        return replace(self, calls=tuple(dict.fromkeys([*self.calls, *expected])), expected=tuple(expected.items()))


def inputs_for(code: str, row_input: str) -> Inputs:
    """The :class:`Inputs` of a row's original ``code`` (the revision is run on the same): the input
    field's role decided from its shape, and the probe calls from the code's own example calls and the
    field. Pure."""
    tree = _parse(code)
    if tree is None:
        return Inputs()
    functions = {n.name: n.args for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    field_tree = _parse(row_input) if row_input.strip() else None
    setup = row_input.strip() + "\n" if field_tree is not None and _only_assignments(field_tree) else ""
    stdin = row_input if row_input.strip() and not setup and _reads_input(tree) else ""
    calls = _example_calls(tree, functions)
    field_calls = [f"{name}({row_input.strip()})" for name, args in functions.items() if _positional(args) == 1] \
        if field_tree is not None and not setup and _literal(row_input) else []
    open_names = bool(row_input.strip()) and not (setup or stdin or field_calls)
    return Inputs(setup, stdin, tuple(dict.fromkeys(calls + field_calls))[:MAX_PROBES], open_names)


def _reads_input(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Call) and _callee(n.func) in ("input", "sys.stdin.read", "sys.stdin.readline")
        for n in ast.walk(node)
    )


def _only_assignments(tree: ast.Module) -> bool:
    return bool(tree.body) and all(
        isinstance(n, ast.Assign) and all(isinstance(t, ast.Name) for t in n.targets) and _literal(ast.unparse(n.value))
        for n in tree.body
    )


_NOT_LITERAL = object()


def _literal_value(text: str) -> object:
    """The value of ``text`` read with :func:`ast.literal_eval` (nothing is executed), or :data:`_NOT_LITERAL`."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


def _literal(text: str) -> bool:
    return _literal_value(text) is not _NOT_LITERAL


def _positional(args: ast.arguments) -> int:
    """How many positional arguments a call must pass."""
    return len(args.posonlyargs) + len(args.args) - len(args.defaults)


def _example_calls(tree: ast.Module, functions: dict[str, ast.arguments]) -> list[str]:
    """Calls of the code's own top-level functions, with literal arguments, made outside any definition
    (``print(factorial(5))`` gives ``factorial(5)``)."""
    calls, todo = [], [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions \
                and all(_literal(ast.unparse(a)) for a in [*node.args, *(k.value for k in node.keywords)]) \
                and all(k.arg for k in node.keywords):
            calls.append(ast.unparse(node))
        todo.extend(ast.iter_child_nodes(node))
    return calls


# ------------------------------------------------------------------------------------------------ behaviour


@dataclass(frozen=True)
class Behaviour:
    """How a code behaved on its row's :class:`Inputs`.

    ``script``: ``clean`` (ran to its end), ``failed`` (an exception, or no end within the time limit:
    ``error``, ``message``), ``unknown`` (ended by one of :data:`UNKNOWN_ERRORS`, or a resource limit or
    crash) or ``broken`` (does not parse); ``stdout``: what the script printed. ``probes``: ``call -> outcome``, the outcome
    ``"= <value>"`` (rendered by the judge from plain values; an object of the program is ``<object>``),
    ``"! <exception class>"``, or absent when the probe run did not get that far.
    """

    script: str
    error: str = ""
    message: str = ""
    line: int = 0
    stdout: str = ""
    probes: dict[str, str] = field(default_factory=dict)
    runs: bool = True  # the script does more than define things (a clean run of definitions shows nothing)

    def to_dict(self) -> dict:
        return {"script": self.script, "error": self.error, "message": self.message, "stdout": self.stdout[:2000],
                "probes": dict(self.probes), "runs": self.runs}


def _cai_show(value, depth=0):
    """A probe's result as text, from plain values only. Runs in the judge (its source is sent there by
    :func:`probe_tests`), and here on the literals a generated test expects: the same text for the same
    value. A program's object is not asked for its repr (its address would differ from run to run, and
    it is the program's to choose)."""
    kind = type(value)
    if kind in (int, float, complex, bool, str, bytes, type(None)):
        return repr(value)
    if depth > 20:
        return "..."
    if kind in (list, tuple):
        inner = ", ".join(_cai_show(item, depth + 1) for item in value)
        return f"[{inner}]" if kind is list else f"({inner}{',' if len(value) == 1 else ''})"
    if kind in (set, frozenset):
        return "{" + ", ".join(sorted(_cai_show(item, depth + 1) for item in value)) + "}"
    if kind is dict:
        return "{" + ", ".join(f"{_cai_show(k, depth + 1)}: {_cai_show(v, depth + 1)}" for k, v in value.items()) + "}"
    return "<object>"


_SHOW = inspect.getsource(_cai_show)


def shown(literal: str) -> str | None:
    """The probe outcome (``"= <value>"``) a call gives when it returns the value of ``literal``, read
    with :func:`ast.literal_eval` (nothing is executed); None when it is not a literal."""
    value = _literal_value(literal)
    return None if value is _NOT_LITERAL else "= " + _cai_show(value)


def probe_tests(calls: Sequence[str]) -> str:
    """The judge's code printing one ``call = value`` or ``call ! Exception`` line per probe."""
    lines = [_SHOW]
    for call in calls:
        lines.append(
            f"try:\n    _cai_value = {call}\nexcept Exception as _cai_error:\n"
            f"    print({call!r} + ' ! ' + type(_cai_error).__name__)\n"
            f"else:\n    print({call!r} + ' = ' + _cai_show(_cai_value))\n"
        )
    return "\n".join(lines)


def library(code: str) -> str:
    """The definitions of ``code`` without what it runs as a script: imports, functions, classes and
    assignments, for the probes to call (a script's ``input()`` or demo must not stop them)."""
    tree = _parse(code)
    if tree is None:
        return code
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
    tree.body = [
        n for n in tree.body
        if isinstance(n, kept) and not (isinstance(n, (ast.Assign, ast.AnnAssign)) and _reads_input(n))
    ]
    return ast.unparse(tree) + "\n"


def observe(codes: Sequence[str], inputs: Sequence[Inputs], workers: int = 1,
            limits: sandbox.Limits = BEHAVIOUR_LIMITS) -> list[Behaviour]:
    """The :class:`Behaviour` of each code on its inputs: two sandbox runs each (the script; the library
    with the probes), all in one batch of at most ``workers`` at once."""
    jobs: list[sandbox.Job] = []
    for code, given in zip(codes, inputs):
        jobs.append(sandbox.Job(code, stdin=given.stdin, setup=given.setup))
        jobs.append(sandbox.Job(library(code), probe_tests(given.calls), setup=given.setup) if given.calls else None)
    results = sandbox.run_many([job for job in jobs if job is not None], limits=limits, workers=workers)
    it = iter(results)
    filled = [next(it) if job is not None else None for job in jobs]
    return [
        _behaviour(code, script, probes, given.open_names)
        for code, script, probes, given in zip(codes, filled[0::2], filled[1::2], inputs)
    ]


def outcomes(result: sandbox.Result | None) -> dict[str, str]:
    """``call -> outcome`` from a probe run's output (:func:`probe_tests`); the calls it did not reach are absent."""
    seen = {}
    for line in (result.tests_stdout if result is not None else "").splitlines():
        call, sep, outcome = line.partition(" = ") if " = " in line else line.partition(" ! ")
        if sep:
            seen[call] = sep.strip() + " " + outcome
    return seen


def probe(codes: Sequence[str], calls: Sequence[Sequence[str]], setups: Sequence[str], workers: int = 1,
          limits: sandbox.Limits = BEHAVIOUR_LIMITS) -> list[dict[str, str]]:
    """The outcome of each of ``calls[k]`` on the definitions of ``codes[k]`` (:func:`library`), after
    ``setups[k]``: one sandbox run per code, in one batch."""
    todo = [k for k, wanted in enumerate(calls) if wanted]
    results = sandbox.run_many(
        [sandbox.Job(library(codes[k]), probe_tests(calls[k]), setup=setups[k]) for k in todo], limits=limits, workers=workers,
    )
    found = dict(zip(todo, map(outcomes, results)))
    return [found.get(k, {}) for k in range(len(codes))]


def _behaviour(code: str, script: sandbox.Result, probes: sandbox.Result | None, open_names: bool = False) -> Behaviour:
    unknown = UNKNOWN_ERRORS | {"SandboxError", "BadInput"} | ({"NameError"} if open_names else set())
    tree = _parse(code)
    if tree is None:
        state = "broken"
    elif script.status == "passed":
        state = "clean"
    elif script.status == "timeout" or (script.status in ("error", "failed") and script.error_type not in unknown):
        state = "failed"  # an exception, a top-level assert, a script that never ends
    else:
        state = "unknown"  # an unknown error, a resource limit, a crash
    seen = outcomes(probes)
    error = "" if state == "clean" else script.error_type or script.status
    runs = tree is None or bool(script_statements(tree)) or state != "clean"
    return Behaviour(state, error, "" if state == "clean" else script.message, 0, script.stdout, seen, runs)


def compare(
    before: Behaviour, after: Behaviour, may_fix: bool, expected: Sequence[tuple[str, str]] = ()
) -> tuple[str, str]:
    """How ``after`` (a revision) behaves against ``before`` (the code it would replace): ``("same", "")``,
    ``("fixed", what)`` (it no longer fails where ``before`` failed, allowed only when ``may_fix``),
    ``("changed", what)``, or ``("unverified", "")`` when nothing could be compared.

    ``expected``: agreed generated tests (``(call, outcome)``). A revision must keep every one ``before``
    passed; when ``before`` missed one and ``after`` passes them all (and ``may_fix``), the functions
    shown wrong may return other values elsewhere too, and the script may print something else."""
    fixed: list[str] = []
    wrong: set[str] = set()  # functions an agreed test showed wrong, and the revision fixed
    for call, want, got in missed(after, expected):
        if call in before.probes and not missed(before, [(call, want)]):
            return "changed", f"{call} {_said(got)} where it passed the agreed test ({want[2:]})"
    was_missed = missed(before, expected)
    if was_missed and may_fix and not missed(after, expected) and all(call in after.probes for call, _ in expected):
        wrong = {_callee_of(call) for call, _, _ in was_missed}
        fixed.append("passes the agreed generated tests it failed (" + ", ".join(call for call, _, _ in was_missed) + ")")
    ended_alike = (after.script, after.error, after.stdout) == (before.script, before.error, before.stdout)
    # no evidence: two runs stopped alike, unknown; or two clean runs of nothing but definitions
    compared = any(call in after.probes for call, _ in expected) or ((before.script != "unknown" or not ended_alike) and (before.runs or after.runs or not ended_alike))
    if before.script == "clean" and not ended_alike and wrong and after.script == "clean":
        fixed.append("the script prints what the fixed code returns")
    elif before.script == "clean" and not ended_alike:
        return "changed", "the script prints something else" if after.script == "clean" else _ending(after, "the script")
    if before.script in ("failed", "broken") and not ended_alike:
        if not (after.script == "clean" and may_fix):
            return "changed", _ending(after, "the script")
        fixed.append(f"the script no longer fails ({before.error or 'does not parse'})")
    if before.script == "unknown" and not ended_alike:
        return "changed", f"{_ending(after, 'the script')} where the original ended unknown ({before.error})"
    for call, old in before.probes.items():
        new = after.probes.get(call)
        if new is None or _callee_of(call) in wrong:
            continue
        compared = True
        if old.startswith("=") and new != old:
            return "changed", f"{call} {new} (was {old})"
        if old.startswith("!") and new != old:
            if not (may_fix and new.startswith("=")):
                return "changed", f"{call} {new} (was {old})"
            fixed.append(f"{call} no longer raises {old[2:]}")
    if not compared:
        return "unverified", ""
    return ("fixed", "; ".join(fixed)) if fixed else ("same", "")


def _ending(behaviour: Behaviour, subject: str) -> str:
    if behaviour.script == "clean":
        return f"{subject} ran cleanly"
    return f"{subject} {behaviour.script} ({behaviour.error}: {behaviour.message[:120]})"


def execution_findings(behaviour: Behaviour, expected: Sequence[tuple[str, str]] = ()) -> list[Finding]:
    """``correctness`` findings of a run, for a row without unit tests: the exception that ended the
    script, each probe that raised, and each ``expected`` outcome (an agreed generated test) the code
    does not give. An unknown run (a missing module, no input left) finds nothing."""
    found = [
        Finding("correctness", f"{call} {_said(got)}, but the generated tests that independent solutions agree on expect {want[2:]}")
        for call, want, got in missed(behaviour, expected)
    ]
    if behaviour.script == "failed":
        found.append(Finding("correctness", f"running the program fails: {behaviour.error}: {behaviour.message}"[:300]))
    found += [
        Finding("correctness", f"{call} raises {outcome[2:]}")
        for call, outcome in behaviour.probes.items() if outcome.startswith("!")
    ]
    return found


def missed(behaviour: Behaviour, expected: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """``(call, expected, got)`` for each expected outcome the behaviour's probes reached and missed (a
    number equal to the one expected, ``250`` for ``250.0``, is no miss: an ``assert ==`` passes)."""
    return [
        (call, want, behaviour.probes[call]) for call, want in expected
        if call in behaviour.probes and not _equal_outcomes(behaviour.probes[call], want)
    ]


def _equal_outcomes(a: str, b: str) -> bool:
    if a == b:
        return True
    if not (a.startswith("= ") and b.startswith("= ")):
        return False
    x, y = (_number(text[2:]) for text in (a, b))
    return x is not None and y is not None and x == y


def _number(text: str) -> int | float | None:
    value = _literal_value(text)
    return value if type(value) in (int, float) else None


def _said(outcome: str) -> str:
    return f"raises {outcome[2:]}" if outcome.startswith("!") else f"returns {outcome[2:]}"


def _callee_of(call: str) -> str:
    """The function a probe calls (``sum_to_n(10)`` -> ``sum_to_n``), "" for another expression."""
    try:
        node = ast.parse(call, mode="eval").body
    except SyntaxError:
        return ""
    return node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else ""


def code_size(code: str) -> int:
    """Statements that do something (not imports, docstrings or ``pass``), nested ones included: what a
    revision must not lose to look better. Code that does not parse counts by its non-blank lines."""
    tree = _parse(code)
    if tree is None:
        return sum(bool(line.strip()) for line in code.splitlines())
    return sum(
        isinstance(node, ast.stmt) and not (isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)) or _is_docstring(node))
        for node in ast.walk(tree)
    )
