"""The automatic checks of a response (correctness in the sandbox, safety, style by ruff, documentation) and
check_many, which batches them."""

import json

import pytest

from cai_lightning import sandbox
from cai_lightning.constitution import CHECKS, checks, run_check
from cai_lightning.constitution.checks import UnitTests, check_many, correctness, documentation, safety, split_tests, style
from cai_lightning.data.records import builtin_files
from conftest import counting_calls

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
TESTS = (
    "import math\n"  # setup: shown, never held back
    "assert f(1) == 2\n"
    "assert f(3) == 4\n"
    "assert (g := f) is not None\n"  # binds a name the tests after it use: setup too
    "assert f(5) == 6\n"
    "assert g(7) == 8\n"
    "assert f(\n    9) == 10\n"  # one test over two lines
)


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
    ruff_calls = counting_calls(monkeypatch, checks, "run_ruff")
    sandbox_batches = counting_calls(monkeypatch, sandbox, "run_many")
    results = check_many(ITEMS, ["style", "correctness"], workers=2)
    assert len(ruff_calls) == 1 and len(sandbox_batches) == 1
    assert len(sandbox_batches[0]) == 6  # the items that parse and have tests
    assert [set(r) for r in results] == [{"style", "correctness"}] * len(ITEMS)


def test_check_many_edge_cases():
    assert check_many([], list(CHECKS)) == []
    assert check_many([(GOOD, "")], []) == [{}]
    with pytest.raises(KeyError, match="pep8"):
        check_many([(GOOD, "")], ["style", "pep8"])

def test_correctness_runs_tests_in_the_sandbox_or_needs_only_to_compile():
    assert correctness(GOOD, "assert add(1, 2) == 3") == []
    [finding] = correctness(GOOD.replace("a + b\n", "a - b\n"), "assert add(0, 0) == 0\nassert add(1, 2) == 3")
    assert finding.message == "the unit test `assert add(1, 2) == 3` fails: AssertionError"  # the test that failed
    [finding] = correctness(GOOD.replace("a + b\n", "x\n"), "assert add(1, 2) == 3, 'sum'")
    assert finding.message == "the unit test `assert add(1, 2) == 3, 'sum'` raises NameError: name 'x' is not defined"
    [finding] = correctness(GOOD + "raise KeyError('k')\n", "assert add(1, 2) == 3")  # before any test ran
    assert finding.message == "the unit tests do not pass (error): KeyError: 'k' (program line 4: raise KeyError('k'))"
    assert correctness(GOOD) == []  # no tests: compiling is enough
    [broken] = correctness("def add(a, b)\n    return a + b\n")
    assert "does not parse" in broken.message and broken.line == 1


def test_split_tests_holds_back_half_of_the_asserts_by_a_seeded_hash():
    import random

    split = split_tests(TESTS, "t-f", seed=0)
    assert split.source == TESTS and split.held_back == {5, 6}  # `f(5) == 6` and `g(7) == 8`
    assert split.shown == "import math\nassert f(1) == 2\nassert f(3) == 4\nassert (g := f) is not None\nassert f(\n    9) == 10\n"
    random.seed(123)  # the global RNG plays no part
    assert split_tests(TESTS, "t-f", seed=0) == split
    by_seed = {seed: split_tests(TESTS, "t-f", seed).held_back for seed in range(4)}
    assert by_seed == {0: {5, 6}, 1: {2, 7, 8}, 2: {3, 5}, 3: {2, 5}}  # a statement's lines go together
    assert split_tests(TESTS, "t-other", seed=0).held_back != split.held_back  # the row is part of the key
    for seed in range(20):  # 5 tests: 2 held back, never the setup lines 1 and 4
        held = split_tests(TESTS, "t-f", seed).held_back
        assert not held & {1, 4} and len({line for line in held if line != 8}) == 2
    assert split_tests("assert f(1) == 2\nassert f(2) == 3", "k", 0).held_back in ({1}, {2})  # 2 tests: one held back
    assert split_tests("x = 1\nassert f(x) == 2", "k", 0).held_back == set()  # a lone test is the only evidence
    assert split_tests("assert f(", "k", 0).held_back == set()  # does not parse: nothing to split


def test_a_held_back_failure_is_reported_without_its_source():
    split = split_tests(TESTS, "t-f", seed=0)  # holds back f(5) == 6 and g(7) == 8
    hard_coded = "def f(x):\n    return {1: 2, 3: 4, 9: 10}[x]\n"  # built from the shown tests
    [finding] = correctness(hard_coded, split)
    assert finding.message == "a held-back test fails (KeyError)"  # not the key (5), not the test's source
    [unsplit] = correctness(hard_coded, TESTS)  # the same run, nothing held back: quoted in full
    assert unsplit.message == "the unit test `assert f(5) == 6` raises KeyError: 5"
    wrong = "def f(x):\n    return x\n"
    [shown] = correctness(wrong, split)  # the first failure is a shown test: quoted
    assert shown.message == "the unit test `assert f(1) == 2` fails: AssertionError"
    assert correctness("def f(x):\n    return x + 1\n", split) == []  # the gate runs all the tests
    batched = check_many([(hard_coded, split), (wrong, UnitTests(TESTS)), (wrong, TESTS)], ["correctness"])
    assert [r["correctness"] for r in batched] == [[finding], [shown], [shown]]


def test_safety_finds_dangerous_calls_and_credentials():
    code = (
        "import os, pickle, subprocess\n"
        "API_KEY = 'sk-123'\n"
        "def run(cmd, blob):\n"
        "    os.system(cmd)\n"
        "    subprocess.run(cmd, shell=True)\n"
        "    subprocess.run(['ls'])\n"
        "    value = eval(blob)\n"
        "    return pickle.loads(blob)\n"
    )
    found = sorted((f.line, f.message.split()[0]) for f in safety(code))
    assert found == [(2, "hard-coded"), (4, "os.system()"), (5, "subprocess.run(...,"), (7, "eval()"), (8, "pickle.loads()")]
    assert safety(GOOD) == []


def test_style_is_ruff_and_documentation_is_docstrings():
    messy = "import os\ndef f(x):\n  y=1\n  return x\n"
    codes = {f.message.split()[0] for f in style(messy)}
    assert {"F401", "E302", "E111", "E225", "F841"} <= codes
    assert style(GOOD) == []
    docs = documentation("class A:\n    def m(self):\n        '''Doc.'''\n\ndef f():\n    pass\n")
    assert [(f.line, f.message) for f in docs] == [(1, "class 'A' has no docstring"), (5, "function 'f' has no docstring")]


def test_unparsable_code_is_a_recorded_finding_for_every_check():
    for name in CHECKS:
        [finding] = run_check(name, "def f(:\n", "assert True")
        assert finding.check == name and "does not parse" in finding.message


@pytest.mark.slow
def test_the_shipped_references_are_safe_and_lint_clean():
    rows = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines()]
    assert [r["task_id"] for r in rows if safety(r["output"])] == []
    assert [r["task_id"] for r in rows if style(r["output"])] == []
    undocumented = sum(bool(documentation(r["output"])) for r in rows)
    assert 0.2 < undocumented / len(rows) < 0.5  # about a third left without docstrings on purpose


def test_model_code_with_invalid_escapes_is_checked_without_warnings():
    import warnings

    from cai_lightning.constitution.fixers import add_docstrings
    from cai_lightning.evaluation import compiles

    code = 'def path():\n    return "C:\\dir\\e"\n'  # "\d" and "\e": SyntaxWarning at every parse since 3.12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert safety(code) == [] and documentation(code) != []
        assert '"""Path."""' in add_docstrings(code, {"path": "Path."}) and compiles(code)
