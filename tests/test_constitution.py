"""The constitution file and its automatic checks."""

import json

import pytest

from cai_lightning.constitution import CHECKS, DEFAULT_PATH, Constitution, run_check
from cai_lightning.constitution.checks import correctness, documentation, safety, style
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
    [finding] = correctness(GOOD.replace("a + b\n", "a - b\n"), "assert add(1, 2) == 3")
    assert "unit tests do not pass (failed)" in finding.message and "AssertionError" in finding.message
    assert correctness(GOOD) == []  # no tests: compiling is enough
    [broken] = correctness("def add(a, b)\n    return a + b\n")
    assert "does not parse" in broken.message and broken.line == 1


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
