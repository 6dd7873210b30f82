"""Generated tests that independent solutions agree on: evidence of correctness for a row without unit tests.

A row scraped from the web has no tests, and its code may run cleanly and still be wrong (an off-by-one, a
missing ``return``): no exception says so. CodeT's idea (Chen et al., 2022) makes such a bug visible
without trusting any one generation. The critic, shown the instruction and the signatures of the row's
functions but **not their bodies** (so that nothing it writes inherits the row's bug), writes

    tests       ``assert f(<literals>) == <literal>`` lines, in ``n`` independent samples
    solutions   the functions themselves, in ``n`` independent samples

and each solution is run on every test's call in the sandbox. A call's expected value is **agreed** when a
test expects it and a strict majority of the solutions (at least two) return it: three generations that
do not see each other coming to the same value. The row's code is then probed on the agreed calls like on
its own examples; a miss is a ``correctness`` finding the critique quotes, and a revision that passes
every agreed test the original missed (and keeps those it passed) may change what the wrong function
returns (:func:`guards.compare`).

A wrong expectation needs the test writer and most solutions wrong alike; the gate's other guards (names,
signatures, the script's statements, behaviour elsewhere) still hold. Nothing here executes code in this
process: the literals are read with :func:`ast.literal_eval`, the solutions run in the sandbox.
"""

from __future__ import annotations

import ast
import copy
from collections import Counter
from collections.abc import Mapping, Sequence

from cai_lightning.constitution import guards
from cai_lightning.constitution.checks import parse_code

MAX_TESTS = 8  # distinct calls kept per row
WRITTEN_TESTS = 5  # asked for in each test-writing reply


def signatures(code: str) -> dict[str, str]:
    """``name -> "def name(params)"`` for each top-level function of ``code`` (methods and classes are
    left out); empty when it does not parse."""
    try:
        tree = parse_code(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            head = copy.copy(node)
            head.body, head.decorator_list = [ast.Pass()], []
            found[node.name] = ast.unparse(head).split("\n", 1)[0].removesuffix(":")
    return found


def _task(instruction: str, input: str) -> str:
    text = f"Task: {instruction.strip()}"
    return text + (f"\nInput: {input.strip()}" if input.strip() else "")


def tests_prompt(instruction: str, input: str, heads: Sequence[str]) -> str:
    """The request for tests of the task, given the functions' signatures only."""
    return (
        f"{_task(instruction, input)}\n\nA correct solution defines:\n" + "\n".join(heads) + "\n\n"
        f"Write {WRITTEN_TESTS} different assert statements that a correct solution passes, one per line, each "
        "calling one of these functions with literal arguments and comparing its result with == to a literal "
        "value. Reply with the assert statements only, in one ```python block."
    )


def solution_prompt(instruction: str, input: str, heads: Sequence[str]) -> str:
    """The request for an independent solution of the task, with the same functions and parameters."""
    return (
        f"{_task(instruction, input)}\n\nSolve the task in Python. Define exactly these functions, with these "
        "parameters:\n" + "\n".join(heads) + "\n\nReply with the code only, in one ```python block."
    )


def parse_tests(replies: Sequence[str], names: set[str]) -> dict[str, set[str]]:
    """``call -> {expected outcome, ...}`` from the test-writing ``replies``: each line that is
    ``assert f(...) == <literal>`` (or ``assert f(...)``, ``assert not f(...)``, ``is True/False/None``)
    with ``f`` in ``names`` and literal arguments, read without executing anything. Lines that are not
    such an assert (prose, a line cut at the token limit) are skipped; at most :data:`MAX_TESTS` calls."""
    found: dict[str, set[str]] = {}
    for reply in replies:
        for line in reply.splitlines():
            test = _test(line.strip(), names)
            if test is not None and (test[0] in found or len(found) < MAX_TESTS):
                found.setdefault(test[0], set()).add(test[1])
    return found


def _test(line: str, names: set[str]) -> tuple[str, str] | None:
    if not line.startswith("assert"):
        return None
    try:
        node = ast.parse(line).body[0]
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Assert):
        return None
    test, expected = node.test, "True"
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        test, expected = test.operand, "False"
    elif isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Eq, ast.Is)):
        if isinstance(test.ops[0], ast.Is) and not (isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value in (True, False, None)):
            return None
        test, expected = test.left, ast.unparse(test.comparators[0])
    if not (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id in names):
        return None
    if not all(guards.shown(ast.unparse(a)) for a in [*test.args, *(k.value for k in test.keywords)]) or not all(k.arg for k in test.keywords):
        return None
    outcome = guards.shown(expected)
    return (ast.unparse(test), outcome) if outcome else None


def agreed(tests: Mapping[str, set[str]], solved: Sequence[Mapping[str, str]], samples: int) -> dict[str, str]:
    """``call -> outcome`` for each tested call whose outcome a test expects and a strict majority of
    ``samples`` solutions (at least two) gave; ``solved``: each solution's outcomes (:func:`guards.probe`)."""
    need = max(2, samples // 2 + 1)
    found = {}
    for call, expected in tests.items():
        votes = Counter(outcomes[call] for outcomes in solved if call in outcomes)
        value, count = votes.most_common(1)[0] if votes else ("", 0)
        if count >= need and value in expected and value.startswith("="):
            found[call] = value
    return found
