"""The gate's guards: what no revision may do to a row, whatever its score. Static guards on literal code;
behaviour through the sandbox, on the inputs a row's own code and ``input`` field give."""

from __future__ import annotations

import pytest

from cai_lightning.constitution import guards
from cai_lightning.constitution.guards import Behaviour, Inputs, compare, inputs_for, observe, static_refusal

FACTORIAL = 'def factorial(n):\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)\n\n\nprint(factorial(5))\n'


@pytest.mark.parametrize(
    "revision, reply, reason",
    [
        ("", None, "empty"),
        ("def factorial(n):\n    return 1\n", "```python\ndef factorial(n):\n    return 1\n", "cut_off"),
        ('"""Factorial."""\nimport math\n', None, "trivial"),
        ("# nothing left\n", None, "trivial"),
        ("def fact(n):\n    return 1\n\n\nprint(fact(5))\n", None, "dropped_name"),
        ("def factorial(n, acc):\n    return acc\n\n\nprint(factorial(5, 1))\n", None, "changed_signature"),
        ("def factorial(n):\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)\n", None, "dropped_statements"),
        ('def factorial(n):\n    """n!"""\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)\n\n\nprint(factorial(5))\n',
         "```python\n...\n```", None),
        ("def factorial(n:\n", None, None),  # does not parse: the checks decide, not a guard
    ],
    ids=["empty", "cut-off", "only-imports-and-docstring", "only-comments", "renamed", "new-parameter",
         "demo-dropped", "docstring-added", "broken"],
)
def test_static_guards(revision, reply, reason):
    assert static_refusal(FACTORIAL, revision, reply) == reason


def test_a_mutable_default_may_become_none_but_a_method_may_not_go():
    cart = "class Cart:\n    def add(self, item, items=[]):\n        items.append(item)\n        return items\n\n    def total(self):\n        return 0\n"
    fixed = "class Cart:\n    def add(self, item, items=None):\n        items = [] if items is None else items\n        items.append(item)\n        return items\n\n    def total(self):\n        return 0\n"
    assert static_refusal(cart, fixed) is None
    assert static_refusal(cart, fixed.split("\n\n    def total")[0] + "\n") == "dropped_name"


def test_an_answer_in_another_language_is_never_replaced():
    js = "function add(a, b) {\n    return a + b;\n}\nconsole.log(add(1, 2));\n"
    assert not guards.looks_like_python(js) and static_refusal(js, "def add(a, b):\n    return a + b\n") == "language"
    assert guards.looks_like_python("def f(:\n    return 1\n")  # broken Python is still Python


def test_inputs_come_from_the_codes_own_calls_and_the_input_field():
    assert inputs_for(FACTORIAL, "") == Inputs(calls=("factorial(5)",))
    uses_data = "def total(xs):\n    return sum(xs)\n\n\nprint(total(arr))\n"
    assert inputs_for(uses_data, "arr = [3, 1, 2]") == Inputs(setup="arr = [3, 1, 2]\n")
    assert inputs_for(uses_data, "[3, 1, 2]").calls == ("total([3, 1, 2])",)
    script = "a = int(input())\nb = int(input())\nprint(a + b)\n"
    assert inputs_for(script, "3\n4") == Inputs(stdin="3\n4")
    assert inputs_for(script, "") == Inputs()
    free_text = "words = text.split()\nprint(len(words))\n"  # `text` comes from the field, as scraped rows have it
    assert inputs_for(free_text, "The quick brown fox") == Inputs(open_names=True)


def behaviour(script="clean", error="", stdout="", **probes):
    return Behaviour(script, error, "", 0, stdout, {k.replace("_", "(") + ")": v for k, v in probes.items()})


def test_compare_allows_a_difference_only_where_the_original_failed_and_only_for_correctness():
    clean = behaviour(stdout="120\n", f_5="= 120")
    assert compare(clean, behaviour(stdout="120\n", f_5="= 120"), may_fix=False) == ("same", "")
    assert compare(clean, behaviour(stdout="121\n", f_5="= 120"), may_fix=True)[0] == "changed"
    assert compare(clean, behaviour(stdout="120\n", f_5="= 121"), may_fix=True)[0] == "changed"
    recursing = behaviour("failed", "RecursionError", f_5="! RecursionError")
    assert compare(recursing, clean, may_fix=True)[0] == "fixed"
    assert compare(recursing, clean, may_fix=False)[0] == "changed"
    assert compare(recursing, behaviour("failed", "ValueError", f_5="! RecursionError"), may_fix=True)[0] == "changed"
    numpy = behaviour("unknown", "ModuleNotFoundError")
    assert compare(numpy, behaviour("unknown", "ModuleNotFoundError"), may_fix=True) == ("unverified", "")
    assert compare(numpy, behaviour("failed", "SyntaxError"), may_fix=True)[0] == "changed"


def test_documented_only():
    assert guards.documented_only("def f():\n    return 1\n", 'def f():\n    """One."""\n    return 1  # one\n')
    assert not guards.documented_only("def f():\n    return 1\n", "def f():\n    return 2\n")


@pytest.mark.slow
def test_observe_runs_the_script_and_the_probes_in_the_sandbox():
    recursing = "def factorial(n):\n    return n * factorial(n - 1)\n\n\nprint(factorial(5))\n"
    script = "name = input()\nprint('hello ' + name)\n"
    numpy = "import numpy as np\n\n\ndef mean(xs):\n    return float(np.mean(xs))\n"
    objects = "class Box:\n    pass\n\n\ndef make(n):\n    return [Box()] * n\n\n\nmake(2)\n"
    typo = "n = 3\nprint(m)\n"
    codes = [FACTORIAL, recursing, script, numpy, objects, typo, typo]
    seen = observe(codes, [inputs_for(FACTORIAL, ""), inputs_for(recursing, ""), inputs_for(script, "Ada"),
                           inputs_for(numpy, "[1, 2]"), inputs_for(objects, ""), inputs_for(typo, ""),
                           inputs_for(typo, "m is the count")], workers=2)
    assert (seen[0].script, seen[0].stdout, seen[0].probes) == ("clean", "120\n", {"factorial(5)": "= 120"})
    assert (seen[1].script, seen[1].error, seen[1].probes) == ("failed", "RecursionError", {"factorial(5)": "! RecursionError"})
    assert (seen[2].script, seen[2].stdout) == ("clean", "hello Ada\n")
    assert (seen[3].script, seen[3].error) == ("unknown", "ModuleNotFoundError")
    assert seen[4].probes == {"make(2)": "= [<object>, <object>]"}  # the judge renders; the program's repr is not asked
    assert (seen[5].script, seen[6].script) == ("failed", "unknown")  # a typo; a name the field may define
    assert compare(seen[1], seen[0], may_fix=True)[0] == "fixed"


def test_the_tests_a_critic_appends_are_left_out_and_a_cut_inside_them_is_no_cut():
    from cai_lightning.constitution.guards import without_added_tests

    original = "def mean(values):\n    return sum(values) // len(values)\n"
    fixed = "def mean(values):\n    return sum(values) / len(values)\n"
    for appended in ("\n# Unit tests\ndef test_mean():\n    assert mean([1, 2]) == 1.5\n\ntest_mean()\n",
                     "\n\ndef check_mean():\n    assert mean([1, 2]) ==", "\nassert mean([1, 3]) == 2\nprint('ok')\n",
                     "\n# Test cases:\nprint(mean([1, 2]))\n", "\nclass TestMean(unittest.TestCase):\n    pass\n"):
        assert without_added_tests(original, fixed + appended) == fixed
    assert without_added_tests(original, fixed) == fixed
    assert without_added_tests(original, "assert True\n") == ""  # nothing but tests: an empty candidate
    script = "def f(x):\n    return x\n\n\nassert f(1) == 1\n"  # the original's own assert is its code
    assert without_added_tests(script, script.replace("return x", "return x + 0")) == script.replace("return x", "return x + 0")
    indented = "def f(x):\n    # tests\n    assert x\n    return x\n"  # not at the left margin: the code's own
    assert without_added_tests("def f(x):\n    return x\n", indented) == indented
