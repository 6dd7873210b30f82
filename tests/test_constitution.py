"""The constitution file and its automatic checks."""

import json

import pytest

from cai_lightning.constitution import CHECKS, DEFAULT_PATH, Constitution, run_check
from cai_lightning.constitution.checks import UnitTests, check_many, correctness, documentation, safety, split_tests, style
from cai_lightning.data.records import builtin_files
from cai_lightning.errors import ConfigError

GOOD = 'def add(a, b):\n    """Return a + b."""\n    return a + b\n'


def test_default_constitution_covers_the_required_principles():
    constitution = Constitution.load(DEFAULT_PATH)
    checks = {p.name: p.check for p in constitution.principles}
    assert checks == {
        "correctness": "correctness", "safety": "safety", "style": "style", "documentation": "documentation",
        "clarity": None, "efficiency": None,
    }
    assert "incorrect" in constitution["correctness"].critique


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("principles: [", "not valid YAML"),
        ("principles: []", "non-empty list under 'principles'"),
        ("principles:\n  - name: x\n    critique: c\n", "principle 1 (x): missing or empty field 'revision'"),
        ("principles:\n  - name: x\n    critique: c\n    revision: r\n    check: pep8\n", "unknown check 'pep8'"),
        ("principles:\n  - {name: x, critique: c, revision: r, severity: 2}\n", "unknown field(s) severity"),
        ("principles:\n  - {name: x, critique: c, revision: r, weight: -1}\n", "weight must be a positive number"),
    ],
)
def test_bad_constitution_files_name_file_and_principle(tmp_path, text, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as err:
        Constitution.load(path)
    assert expected in str(err.value)


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


TESTS = (
    "import math\n"  # setup: shown, never held back
    "assert f(1) == 2\n"
    "assert f(3) == 4\n"
    "assert (g := f) is not None\n"  # binds a name the tests after it use: setup too
    "assert f(5) == 6\n"
    "assert g(7) == 8\n"
    "assert f(\n    9) == 10\n"  # one test over two lines
)


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

    from cai_lightning.constitution.checks import add_docstrings
    from cai_lightning.evaluation import compiles

    code = 'def path():\n    return "C:\\dir\\e"\n'  # "\d" and "\e": SyntaxWarning at every parse since 3.12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert safety(code) == [] and documentation(code) != []
        assert '"""Path."""' in add_docstrings(code, {"path": "Path."}) and compiles(code)
