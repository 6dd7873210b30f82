"""The behaviour-keeping fixer: ruff's safe fixes and formatter (fix_many), docstrings added (add_docstrings)."""

import ast
import json
import tempfile

import pytest

from cai_lightning.constitution import fixers
from cai_lightning.constitution.checks import CHECKS, check_many, correctness, documentation, style
from cai_lightning.constitution.docstrings import summary_docstring
from cai_lightning.constitution.fixers import LINE_CHARS, add_docstrings, fix_many
from cai_lightning.data.records import builtin_files
from conftest import counting_calls


MESSY = "import os\nimport sys\ndef add(a,b):\n  # the sum\n  return a+b   \n"


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
    ruff_calls = counting_calls(monkeypatch, fixers, "run_ruff")
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
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
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

