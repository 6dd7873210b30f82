"""Corrupting training outputs the way scraped data is: seeded, a given share, one kind per row."""

import ast
import json
import random

import pytest

from cai_lightning import sandbox
from cai_lightning.constitution.checks import parse_code, safety
from corruption import KINDS, corrupt, corrupt_code, edits_of
from cai_lightning.data.records import builtin_files

ROWS = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines() if line.strip()]

TOTAL = '''def total(items, limit):
    """Sum the items below limit."""
    result = 0
    for i in range(len(items)):
        if items[i] < limit:  # strictly below
            result += items[i]
    return result
'''


def _changed(before, after):
    return [row["task_id"] for row, new in zip(before, after) if new["output"] != row["output"]]


def test_same_seed_corrupts_the_same_rows_the_same_way_whatever_their_order():
    rows, log = corrupt(ROWS, 0.3, seed=0)
    assert corrupt(ROWS, 0.3, seed=0) == (rows, log)
    assert [r["task_id"] for r in rows] == [r["task_id"] for r in ROWS]  # input order, same length
    assert sorted(_changed(ROWS, rows)) == sorted(entry["task_id"] for entry in log)
    shuffled = random.Random(1).sample(ROWS, len(ROWS))
    again, log_again = corrupt(shuffled, 0.3, seed=0)
    assert log_again == log and {r["task_id"]: r["output"] for r in again} == {r["task_id"]: r["output"] for r in rows}
    other, _ = corrupt(ROWS, 0.3, seed=1)
    assert set(_changed(ROWS, other)) != set(_changed(ROWS, rows))
    assert ROWS == [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 1.0])
def test_the_fraction_is_respected_and_a_larger_one_corrupts_a_superset(fraction):
    rows, log = corrupt(ROWS, fraction, seed=0)
    assert len(log) == len(_changed(ROWS, rows)) == round(fraction * len(ROWS))
    smaller, _ = corrupt(ROWS, fraction / 2, seed=0)
    assert set(_changed(ROWS, smaller)) <= set(_changed(ROWS, rows))
    if fraction == 0.3:  # every kind is drawn, none dominates
        counts = {kind: sum(entry["kind"] == kind for entry in log) for kind in KINDS}
        assert all(5 <= n <= 45 for n in counts.values()), counts


def test_bad_arguments_and_rows_nothing_applies_to():
    with pytest.raises(ValueError, match=r"fraction must lie in \[0, 1\], got 1.5"):
        corrupt(ROWS, 1.5, 0)
    with pytest.raises(ValueError, match="unknown kind.*'typo'.*syntax_error, wrong_operator"):
        corrupt(ROWS, 0.1, 0, kinds=["typo"])
    rows = [{"task_id": "x", "output": "def f(:\n"}, {"task_id": "y", "output": "x = 1\n"},
            {"task_id": "z", "output": "def f(x):\n    return x\n"}]
    assert corrupt(rows, 0.0, 0) == (rows, [])
    # "def f(:" does not parse, "x = 1" has no colon or bracket to drop
    with pytest.raises(ValueError, match="only 1 of 3 rows can be corrupted, 3 asked for"):
        corrupt(rows, 1.0, 0, kinds=["syntax_error"])
    [entry] = corrupt(rows, 0.3, 0, kinds=["syntax_error"])[1]
    assert entry["task_id"] == "z" and entry["kind"] == "syntax_error"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gives_code_that_parses_and_differs_but_syntax_errors(kind):
    applied = 0
    for row in ROWS:
        found = corrupt_code(row["output"], random.Random(row["task_id"]), [kind])
        if found is None:
            continue
        applied += 1
        assert found[0] == kind and found[2].startswith("line ")
        if kind == "syntax_error":
            with pytest.raises(SyntaxError):
                parse_code(found[1])
        else:
            assert ast.dump(parse_code(found[1])) != ast.dump(parse_code(row["output"])), row["task_id"]
    assert applied > len(ROWS) / 3  # off_by_one, the rarest, applies to about 40% of the shipped outputs


def test_unsafe_call_is_flagged_by_the_safety_check():
    flagged = 0
    for row in ROWS:
        found = corrupt_code(row["output"], random.Random(row["task_id"]), ["unsafe_call"])
        if found is not None and not safety(row["output"]):
            assert {f.message.split("(")[0] for f in safety(found[1])} & {"eval", "pickle.loads"}, found[2]
            flagged += 1
    assert flagged > len(ROWS) * 0.8


def test_literal_corruptions_of_one_function():
    def applied(kind):
        return [(edit.description, edit.apply(TOTAL)) for edit in edits_of(TOTAL, kind)]

    [(what, code), _] = applied("wrong_operator")
    assert what == "line 5: `<` → `<=`" and code == TOTAL.replace("items[i] < limit", "items[i] <= limit")
    assert applied("wrong_operator")[1][0] == "line 6: `+=` → `-=`"
    assert applied("off_by_one") == [
        ("line 4: `len(items)` → `len(items) + 1`", TOTAL.replace("range(len(items))", "range(len(items) + 1)")),
        ("line 4: `len(items)` → `len(items) - 1`", TOTAL.replace("range(len(items))", "range(len(items) - 1)")),
    ]
    assert applied("missing_return") == [("line 7: removed the final `return result`", TOTAL.replace("    return result\n", ""))]
    assert applied("unsafe_call") == [(
        "line 7: `result` → `pickle.loads(pickle.dumps(result))`",
        "import pickle\n" + TOTAL.replace("return result", "return pickle.loads(pickle.dumps(result))"),
    )]
    syntax = applied("syntax_error")
    assert syntax[0] == ("line 1: removed a closing ')'", TOTAL.replace("limit):", "limit:"))
    assert syntax[1] == ("line 1: removed the ':' ending the line", TOTAL.replace("limit):", "limit)"))
    assert [what for what, _ in syntax[2:]] == [
        "line 4: removed a closing ')'", "line 4: removed a closing ')'", "line 4: removed the ':' ending the line",
        "line 5: removed a closing ']'", "line 5: removed the ':' ending the line",  # not the comment's
        "line 6: removed a closing ']'",
    ]


def test_literal_corruptions_of_expressions():
    add = "def add(a, b):\n    return a + b\n"
    [(what, code)] = [(e.description, e.apply(add)) for e in edits_of(add, "unsafe_call")]
    assert (what, code) == ("line 2: `a + b` → `eval('a + b')`", "def add(a, b):\n    return eval('a + b')\n")
    assert [e.apply(add) for e in edits_of(add, "missing_return")] == ["def add(a, b):\n    a + b\n"]
    last = "def last(xs, n):\n    if n > 0 and xs:\n        return xs[-1] + xs[n - 1]\n    return None\n"
    assert [e.description for e in edits_of(last, "off_by_one")] == [
        "line 2: `0` → `1`", "line 2: `0` → `-1`", "line 3: `-1` → `0`", "line 3: `-1` → `-2`",
        "line 3: `n - 1` → `n`", "line 3: `n - 1` → `n - 2`",
    ]
    assert [e.description for e in edits_of(last, "wrong_operator")] == [
        "line 2: `>` → `>=`", "line 2: `and` → `or`", "line 3: `+` → `-`", "line 3: `-` → `+`",
    ]
    assert [e.description for e in edits_of(last, "missing_return")] == [  # not `return None`
        "line 3: `return` dropped from `return xs[-1] + xs[n - 1]`"
    ]
    assert edits_of("greeting = 'hi ' + name\n", "wrong_operator") == []  # no one subtracts from a string
    assert edits_of("def f(:\n", "syntax_error") == []  # broken already


@pytest.mark.slow
def test_behaviour_changing_kinds_mostly_fail_the_tests_and_unsafe_calls_pass():
    """On a sample of the shipped tasks, in the sandbox: the share of corrupted outputs whose unit tests
    fail, per kind (on all 440: wrong_operator 0.90, off_by_one 0.85, missing_return 0.98; unsafe_call 0.002)."""
    jobs, kinds = [], []
    for row in ROWS[::10]:
        for kind in ("wrong_operator", "off_by_one", "missing_return", "unsafe_call"):
            found = corrupt_code(row["output"], random.Random(row["task_id"]), [kind])
            if found is not None:
                jobs.append((found[1], row["tests"]))
                kinds.append(kind)
    results = sandbox.run_many(jobs, workers=2)
    failing = {
        kind: sum(k == kind and r.status != "passed" for k, r in zip(kinds, results)) / kinds.count(kind)
        for kind in set(kinds)
    }
    assert failing["wrong_operator"] > 0.75 and failing["off_by_one"] > 0.6 and failing["missing_return"] > 0.9
    assert failing["unsafe_call"] < 0.05, failing
