"""Batched checks (check_many) and the behaviour-keeping fixer (fix_many, add_docstrings, summary_docstring)."""

import ast
import json
import re

import pytest

from cai_lightning import sandbox
from cai_lightning.constitution import checks
from cai_lightning.constitution.checks import (
    CHECKS,
    LINE_CHARS,
    add_docstrings,
    check_many,
    correctness,
    documentation,
    fix_many,
    run_check,
    style,
    summary_docstring,
)
from cai_lightning.data.records import builtin_files

GOOD = 'def add(a, b):\n    """Return a + b."""\n    return a + b\n'
MESSY = "import os\nimport sys\ndef add(a,b):\n  # the sum\n  return a+b   \n"
ITEMS = [
    (GOOD, "assert add(1, 2) == 3"),  # clean
    (MESSY, "assert add(1, 2) == 3"),  # style and documentation findings, tests pass
    ("def add(a, b)\n    return a + b\n", "assert add(1, 2) == 3"),  # does not parse
    (GOOD.replace("a + b\n", "a - b\n"), "assert add(1, 2) == 3"),  # tests fail
    ("import os\nTOKEN = 'abc'\ndef run(cmd):\n    os.system(cmd)\n    return eval(cmd)\n", ""),  # unsafe, no tests
    ("", ""),
    ("", "assert True"),
    (GOOD, "assert add(1, 2) == 3 +"),  # the tests do not parse
    ("class A:\r\n    def m(self):  \r\n        return 1\r\n", "assert A().m() == 1"),  # CRLF, trailing space
]


def _counting(monkeypatch, module, name):
    """Wrap ``module.name`` so that the list returned records the first argument of every call."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_check_many_gives_exactly_the_findings_of_run_check_one_by_one():
    one_by_one = [{name: run_check(name, code, tests) for name in CHECKS} for code, tests in ITEMS]
    assert check_many(ITEMS, list(CHECKS), workers=2) == one_by_one
    # the set is varied: every check finds something somewhere, and not everywhere
    for name in CHECKS:
        assert 0 < sum(bool(found[name]) for found in one_by_one) < len(ITEMS), name
    assert [f.message.split()[0] for f in one_by_one[1]["style"]] == [
        "F401", "F401", "E302", "E231", "E114", "E111", "E226", "W291"
    ]
    assert "does not parse" in one_by_one[2]["style"][0].message


def test_check_many_batches_ruff_and_the_sandbox(monkeypatch):
    ruff_calls = _counting(monkeypatch, checks, "_ruff")
    sandbox_batches = _counting(monkeypatch, sandbox, "run_many")
    results = check_many(ITEMS, ["style", "correctness"], workers=2)
    assert len(ruff_calls) == 1 and len(sandbox_batches) == 1
    assert len(sandbox_batches[0]) == 6  # the items that parse and have tests
    assert [set(r) for r in results] == [{"style", "correctness"}] * len(ITEMS)


def test_check_many_edge_cases():
    assert check_many([], list(CHECKS)) == []
    assert check_many([(GOOD, "")], []) == [{}]
    with pytest.raises(KeyError, match="pep8"):
        check_many([(GOOD, "")], ["style", "pep8"])


def _shipped_rows() -> dict[str, dict]:
    """The shipped task set, by task id."""
    return {row["task_id"]: row for path in builtin_files() for row in map(json.loads, path.read_text().splitlines())}


def test_summary_docstring_says_what_a_function_does_in_the_imperative():
    rows = _shipped_rows()

    def summary(task_id):
        return summary_docstring(rows[task_id]["instruction"], rows[task_id]["entry_point"])

    assert summary("strings/count_consonants") == "Return how many consonants `text` contains."
    # was cut mid-sentence ("... where each\n element."): now the sentence without its trailing modifier
    assert summary("collections/rotate_right") == (
        "Return a new list where each element of `items` has moved `k` places to the right."
    )
    assert summary("collections/flatten_once") == (  # coordinated verbs too
        "Take a list of lists and return a single list containing all inner elements in order."
    )
    assert summary("objects/memoize_decorator") == "Cache a function's results in a dict keyed by the tuple of positional arguments."
    assert summary("objects/countdown_gen") == "Yield n, n-1, ..., 1 and then stop."
    assert summary("collections/chunk") == "Split the list `items` into consecutive lists of length `size`; the last chunk may be shorter."
    assert summary("collections/exclusive_elements") == (  # too long with "(the symmetric difference)"
        "Return a sorted list of the distinct values found in exactly one of the two lists."
    )
    assert summary("strings/escape_html") == "Escape the characters that are special in HTML."  # before the colon
    # the entry point is asked for in the second sentence, or after another definition
    assert summary("objects/insufficient_funds_error") == (
        "Return the new balance, raising `InsufficientFundsError` when the amount exceeds the balance."
    )
    assert summary("objects/fibonacci_islice") == (
        "Return the first n Fibonacci numbers as a list by consuming the generator with `itertools.islice`."
    )
    assert summary_docstring("Write a function `is_prime(n)` that checks whether `n` is prime.") == "Check whether `n` is prime."
    assert summary_docstring("Create a function `mean(xs)` which computes the mean of `xs`.") == "Compute the mean of `xs`."
    assert summary_docstring("Write `f(x)` returning `2 * x`, and `g(x)` returning `x / 2`.", "g") == "Return `x / 2`."
    assert summary_docstring("Write a function add(a, b) that returns the sum. Use ints.") == "Return the sum."
    assert summary_docstring("Write a Python function to reverse a string.") == "Reverse a string."


def test_summary_docstring_of_a_class_says_what_it_is_or_does():
    rows = _shipped_rows()
    stack = "Write a class `Stack` that implements a LIFO stack with push, pop and peek. Use a list."
    assert summary_docstring(stack) == "A LIFO stack with push, pop and peek."
    assert summary_docstring(rows["objects/tally_counter"]["instruction"], "Tally") == "Counts hashable items."
    assert summary_docstring(rows["objects/interval_class"]["instruction"], "Interval") == (
        "A closed interval of numbers; the constructor raises ValueError if start > end."
    )
    assert summary_docstring(rows["objects/rectangle_dunder"]["instruction"], "Rectangle") == ""  # only its methods


def test_summary_docstring_is_empty_rather_than_wrong():
    rows = _shipped_rows()
    for task_id in (
        "collections/insert_interval",  # "... `insert_interval(intervals, new)` where `intervals` is ...": no what-it-does
        "collections/binary_search",  # "that implements ... binary search": the request's own verb
        "objects/make_toggle",  # "returns a closure which flips ... and returns the new state": whose "returns"?
        "objects/make_multiplier_list",  # "`multipliers(n)` returning a list of n such functions": such what?
        "strings/parse_ini",  # "like the example input"
        "collections/count_words",  # 119 characters: no shorter whole sentence
    ):
        assert summary_docstring(rows[task_id]["instruction"], rows[task_id]["entry_point"]) == "", task_id
    first_fibs = rows["objects/fibonacci_islice"]["instruction"]
    assert summary_docstring(first_fibs) == ""  # two definitions: which one is it?
    assert summary_docstring(first_fibs, "fibonacci") == ""  # what it yields runs into the next definition
    assert summary_docstring(first_fibs, "other_name") == ""
    assert summary_docstring("Write a class `Matrix` built from a list of rows.") == ""
    assert summary_docstring("Is it odd?") == summary_docstring(" \n ") == summary_docstring("x" * 200) == ""
    assert summary_docstring("Write a function `f(x)` that uses `g` to do it.") == ""  # "Use ...": a request


def test_summary_docstrings_of_the_shipped_instructions_are_whole_sentences_never_the_request():
    rows = list(_shipped_rows().values())
    summaries = [summary_docstring(row["instruction"], row["entry_point"]) for row in rows]
    for row, summary in zip(rows, summaries):
        if not summary:
            continue
        assert len(summary) <= checks.SUMMARY_CHARS and summary[0].isupper() and summary.endswith("."), summary
        assert summary.split()[0] not in ("Write", "Implement", "Create", "Define", "Given", "Use"), summary
        assert summary.count("`") % 2 == 0 and summary.count("(") == summary.count(")"), summary
        # never cut: its last two words end a sentence, clause or phrase of the instruction ("stop" for "stops")
        last = re.escape(" ".join(summary[:-1].split(" ")[-2:]))
        assert re.search(last + r"(?:e?s)?(?:[.,;:!?]|\s\(|$)", " ".join(row["instruction"].split())), summary
    functions = [s for row, s in zip(rows, summaries) if not re.search(r"\b(class|dataclass|exception)\b", row["instruction"])]
    assert sum(map(bool, functions)) > 0.6 * len(functions)  # most functions get one


def test_add_docstrings_documents_named_definitions_at_any_depth_and_keeps_the_rest():
    code = (
        "import math\n"
        "\n"
        "\n"
        "class Circle:  # a shape\n"
        "    # the radius is kept as given\n"
        "    def __init__(self, r):\n"
        "        self.r = r\n"
        "\n"
        "    @property\n"
        "    def area(self):\n"
        '        """Already documented."""\n'
        "        return math.pi * self.r**2\n"
        "\n"
        "\n"
        "def outer():\n"
        "    def inner(): return 1\n"
        "    return inner\n"
    )
    names = {"Circle": "A circle.", "__init__": "Keep r.", "area": "Not used.", "outer": "Outer.", "inner": "Not used.", "gone": "x"}
    assert add_docstrings(code, names) == code.replace(
        "    # the radius", '    """A circle."""\n    # the radius'
    ).replace(
        "        self.r = r", '        """Keep r."""\n        self.r = r'
    ).replace(
        "    def inner()", '    """Outer."""\n    def inner()'
    )
    assert add_docstrings(code, {}) == code
    assert add_docstrings("def f(): return 1\n", {"f": "F."}) == "def f(): return 1\n"  # body on the header's line
    assert add_docstrings("def f(\n    a): return a\n", {"f": "F."}) == "def f(\n    a): return a\n"
    assert add_docstrings("def f(:\n", {"f": "F."}) == "def f(:\n"
    assert add_docstrings("def f():\r\n    return 1\r\n", {"f": "F."}) == 'def f():\r\n    """F."""\r\n    return 1\r\n'


@pytest.mark.parametrize(
    "text",
    ['He said """hi""" and left "', "a \\ backslash \\", '""""', "tab\tand\x00null \u200b", 'ends with ""'],
)
def test_add_docstrings_escapes_what_would_break_the_literal(text):
    result = add_docstrings("class A:\n    x = 1\n", {"A": text})
    assert ast.get_docstring(ast.parse(result).body[0], clean=False) == " ".join(text.split())


def test_add_docstrings_wraps_long_text_to_the_line_limit():
    text = "word " * 40
    result = add_docstrings("def f():\n    def g():\n        return 1\n    return g\n", {"g": text})
    assert max(len(line) for line in result.splitlines()) <= LINE_CHARS
    assert " ".join(ast.get_docstring(ast.parse(result).body[0].body[0]).split()) == " ".join(text.split())
    assert result.splitlines()[-3] == '        """'  # the closing quotes on a line of their own


def test_add_docstrings_leaves_code_alone_when_the_result_would_differ_otherwise():
    decorated = "def f():\n    @(\n        dec\n    )\n    def g():\n        pass\n"
    assert add_docstrings(decorated, {"f": "F."}) == decorated  # the decorator's line is not the statement's
    string_header = 'def f(a="""\n# x"""):\n    return a\n'
    assert add_docstrings(string_header, {"f": "F."}) == string_header  # would land inside the string


def test_fix_many_clears_style_and_documentation_and_keeps_behaviour():
    [fixed] = fix_many([MESSY], [{"add": "Return a + b."}])
    assert fixed == 'def add(a, b):\n    """Return a + b."""\n    # the sum\n    return a + b\n'
    assert style(MESSY) and documentation(MESSY)
    assert style(fixed) == [] and documentation(fixed) == []
    assert correctness(fixed, "assert add(1, 2) == 3\nassert add('a', 'b') == 'ab'") == []


def test_fix_many_applies_only_safe_fixes():
    code = "def f(x):\n    y = 1\n    if x == None:\n        return True\n    return print(f'no placeholders')\n"
    [fixed] = fix_many([code])
    assert "y = 1" in fixed and "x == None" in fixed  # F841 and E711 have unsafe fixes only
    assert 'print("no placeholders")' in fixed  # F541: safe
    assert {f.message.split()[0] for f in style(fixed)} == {"F841", "E711"}


def test_fix_many_is_idempotent_keeps_order_and_returns_broken_code_unchanged(monkeypatch):
    codes = [MESSY, "def f(:\n  pass\n", "", "class B :\n  def m(self) : return 2\n", MESSY.replace("add", "plus")]
    docstrings = [{"add": "Add."}, {"f": "F."}, {}, {"B": "A class " * 20, "m": "M."}, {}]
    ruff_calls = _counting(monkeypatch, checks, "_ruff")
    fixed = fix_many(codes, docstrings)
    assert len(ruff_calls) == 3  # safe fixes, format, format again where a docstring was added
    assert fixed[1] == codes[1] and fixed[2] == ""
    assert "def add(a, b):" in fixed[0] and '"""Add."""' in fixed[0]
    assert "def plus(a, b):" in fixed[4] and '"""' not in fixed[4]
    assert documentation(fixed[3]) == [] and style(fixed[3]) == []
    assert fix_many(fixed, docstrings) == fixed
    assert fix_many(fixed) == fixed
    plain = fix_many(codes)  # docstrings=None: none added
    assert plain == [fix_many([code])[0] for code in codes] and '"""' not in "".join(plain)
    with pytest.raises(ValueError, match="one per code"):
        fix_many(codes, docstrings[:2])
    assert fix_many([]) == []


def test_ruff_sees_every_file_even_in_a_git_ignored_temporary_directory(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()  # enough for ruff to honour the .gitignore
    (tmp_path / ".gitignore").write_text("*.py\n")
    monkeypatch.setattr(checks.tempfile, "tempdir", str(tmp_path))
    assert check_many([("import os\n", "")], ["style"]) == [{"style": style("import os\n")}] != [{"style": []}]
    assert fix_many(["import os\nx=1\n"]) == ["x = 1\n"]


@pytest.mark.slow
def test_fixing_the_shipped_references_keeps_them_passing_and_clean():
    rows = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines()]
    docstrings = [{row["entry_point"]: summary_docstring(row["instruction"], row["entry_point"])} for row in rows]
    fixed = fix_many([row["output"] for row in rows], docstrings)
    assert sum(f != row["output"] for f, row in zip(fixed, rows)) > len(rows) / 4  # the fixer does something
    results = check_many([(f, row["tests"]) for f, row in zip(fixed, rows)], list(CHECKS), workers=2)
    failing = {row["task_id"]: r for row, r in zip(rows, results) if r["correctness"] or r["style"] or r["safety"]}
    assert failing == {}
    def undocumented(row, findings):
        return any(f"'{row['entry_point']}'" in f.message for f in findings)

    undocumented_entry_points = [row["task_id"] for row, r in zip(rows, results) if undocumented(row, r["documentation"])]
    # documented unless it was not and no summary could be written for it
    assert undocumented_entry_points == [
        row["task_id"] for row, d in zip(rows, docstrings)
        if not d[row["entry_point"]] and undocumented(row, documentation(row["output"]))
    ]
    assert 0 < len(undocumented_entry_points) < sum(undocumented(row, documentation(row["output"])) for row in rows) / 2
    assert fix_many(fixed, docstrings) == fixed
