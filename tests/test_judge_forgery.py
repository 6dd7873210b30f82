"""The judge's verdicts, attacked: programs that try to pass tests they fail by reaching the tests' names
(builtins deleted and redefined, the tests' own flags rebound) or by answering the tests' operators, a
program that tries to take the batch down with it, and one that floods the judge. Each attack runs
through ``evaluation.evaluate()`` (the path of ``ExecutionEval``) beside a correct program in the same
batch, and through ``constitution.checks.correctness`` / ``check_many`` (the training-data gate), as this
process's user in-process and as ``nobody`` in a child (see ``unprivileged.py``). Then the other side:
correct programs the old rules failed (a ``Counter`` compared with a dict, an entry point named ``sum``)
pass, in MBPP's format.
"""

from __future__ import annotations

import json

import pytest
from unprivileged import run_python, why_not_as_nobody

from cai_lightning import sandbox
from cai_lightning.sandbox import wire
from cai_lightning.constitution.checks import UnitTests, check_many, correctness, safety
from cai_lightning.evaluation import Problem, evaluate, mbpp_problems

AS_NOBODY = pytest.mark.skipif(why_not_as_nobody() is not None, reason=str(why_not_as_nobody()))
LIMITS = sandbox.Limits(timeout_s=10, memory_mb=512)
CORRECT = "def add(a, b):\n    return a + b\n"
WRONG = "\ndef add(a, b):\n    return a - b\n"
# The tests of each attack (all true of a correct `add`); HumanEval-style ones define check(candidate).
TESTS = {
    "humaneval": (
        "def check(candidate):\n    assert abs(candidate(1, 2) - 3) < 1e-9\n    assert isinstance(candidate(2, 2), int)\n"
        "    assert all(candidate(a, a) == 2 * a for a in range(3))\n"
    ),
    "flag": "failed = False\nfor a, b, want in ((1, 2, 3), (-1, 1, 0)):\n    if add(a, b) != want:\n        failed = True\nassert not failed\n",
    "count": "fails = 0\nfor a, b, want in ((1, 2, 3), (-1, 1, 0)):\n    if add(a, b) != want:\n        fails += 1\nassert fails == 0\n",
    "near": "assert abs(add(1, 2) - 3) < 1e-9\nassert abs(3.0 - add(1, 2)) < 1e-9\n",
    "difference": "assert add(1, 2) - 3 == 0\n",
}
# name -> (program, which TESTS). Every one of them passed the judge before names and operators were
# decided by it (each forged a pass); none may now.
FORGERIES = {
    # 1. builtins the program deleted from its own `builtins` module, then defined: the old filter on the
    # program's side let them through, and check() called the program's abs / isinstance / all
    "builtins-deleted-and-redefined": (
        "import builtins\ndel builtins.abs, builtins.isinstance, builtins.all\n"
        "def abs(x):\n    return 0\ndef isinstance(x, t):\n    return True\ndef all(xs):\n    return True\n" + WRONG,
        "humaneval",
    ),
    # 2. the tests' own variables, rebound between statements: the judge took the program's value when the
    # tests' was identical to what the program gave before (True is True; small ints are cached)
    "flag-rebound-through-a-singleton": (
        "failed = True\ndef add(a, b):\n    global failed\n    failed = False\n    return a - b\n", "flag",
    ),
    "counter-rebound-through-a-small-int": (
        "fails = 2\ndef add(a, b):\n    global fails\n    fails = 0\n    return a - b\n", "count",
    ),
    # 3. operators answered by the program's object, told the tests' value
    "sub-answers-zero": (
        "class Near:\n    def __sub__(self, other):\n        return 0\n    __rsub__ = __sub__\n"
        "def add(a, b):\n    return Near()\n", "near",
    ),
    "sub-answers-an-object-whose-abs-is-zero": (
        "class Zero:\n    def __abs__(self):\n        return 0\n    def __lt__(self, other):\n        return True\n"
        "    def __eq__(self, other):\n        return True\n"
        "class Near:\n    def __sub__(self, other):\n        return Zero()\n    __rsub__ = __sub__\n"
        "def add(a, b):\n    return Near()\n", "near",
    ),
    "dict-subclass-answers-sub": (
        "class Near(dict):\n    def __sub__(self, other):\n        return 0\n    __rsub__ = __sub__\n"
        "def add(a, b):\n    return Near()\n", "difference",
    ),
}


def judge_forgeries() -> dict:
    """Each forgery and a correct program through one ``evaluate()`` call per test style, and each through
    ``correctness`` and ``check_many``: {name: [evaluate's status of the forgery, of the correct program,
    correctness passed?, check_many passed?]}. JSON-able, for the child run as ``nobody``."""
    verdicts = {}
    for name, (program, style) in FORGERIES.items():
        tests = TESTS[style]
        report = evaluate([Problem("add", "", "add", tests)], [[program, CORRECT]], limits=LIMITS, workers=2)
        run_tests = tests + ("check(add)\n" if "def check(" in tests else "")
        gate = UnitTests(run_tests, entry_point="add")
        verdicts[name] = [
            report.samples[0].status, report.samples[1].status,
            correctness(program, gate, limits=LIMITS) == [],
            check_many([(program, gate)], ["correctness"], limits=LIMITS)[0]["correctness"] == [],
        ]
    return verdicts


def test_no_forgery_passes_in_process():
    verdicts = judge_forgeries()
    assert {name: v for name, v in verdicts.items() if v[0] == "passed" or v[1] != "passed" or v[2] or v[3]} == {}


@AS_NOBODY
def test_no_forgery_passes_as_nobody():
    done = run_python("import json, test_judge_forgery as t\nprint(json.dumps(t.judge_forgeries()))", 300)
    assert done.returncode == 0, done.stderr[-4000:]
    verdicts = json.loads(done.stdout.splitlines()[-1])
    assert set(verdicts) == set(FORGERIES)
    assert {name: v for name, v in verdicts.items() if v[0] == "passed" or v[1] != "passed" or v[2] or v[3]} == {}


def test_the_forged_operators_fail_with_a_message_saying_why():
    near, _ = FORGERIES["sub-answers-zero"]
    result = sandbox.run(near, TESTS["near"], limits=LIMITS, entry_point="add")
    assert (result.status, result.error_type, result.tests_line) == ("error", "TypeError", 1)
    assert "computed from the tests' value" in result.message
    zero, _ = FORGERIES["sub-answers-an-object-whose-abs-is-zero"]
    result = sandbox.run(zero, TESTS["near"], limits=LIMITS, entry_point="add")
    assert result.error_type == "TypeError" and "'abs' of an object derived from the tests' value" in result.message


def test_the_program_objects_own_operators_still_answer_between_them_and_on_scalars():
    program = (
        "class V:\n    def __init__(self, *xs):\n        self.xs = xs\n"
        "    def __add__(self, o):\n        return V(*(a + b for a, b in zip(self.xs, o.xs)))\n"
        "    def __mul__(self, k):\n        return V(*(a * k for a in self.xs))\n    __rmul__ = __mul__\n"
        "    def __eq__(self, o):\n        return isinstance(o, V) and self.xs == o.xs\n"
        "    def __abs__(self):\n        return sum(a * a for a in self.xs) ** 0.5\n"
        "    def __len__(self):\n        return len(self.xs)\n"
    )
    tests = (
        "assert V(1, 2) + V(3, 4) == V(4, 6) and V(1, -2) * 3 == V(3, -6) == 3 * V(1, -2)\n"
        "assert abs(V(3, 4)) == 5.0 and len(V(1, 2, 3)) == 3 and (V(1) * 2).xs == (2,)\n"
        "assert V(1) != 1 and not (V(1) == (1,))\n"
    )
    assert sandbox.run(program, tests, limits=LIMITS, entry_point="V").passed
    # what the program computed from the tests' 3 gives no plain value: neither abs, nor len, nor ==
    for derived in ("abs(V(3, 4) * 1)", "len(V(1) * 3)", "bool(V(1) * 3)"):
        result = sandbox.run(program, f"assert {derived}", limits=LIMITS, entry_point="V")
        assert result.error_type == "TypeError", (derived, result)
    assert sandbox.run(program, "assert V(1) * 3 != 3", limits=LIMITS, entry_point="V").passed


def test_names_are_the_judges_the_tests_and_the_entry_points():
    program = "import builtins\ndel builtins.len\ndef len(x):\n    return 3\nx = 5\ndef f():\n    return x\ndef sqrt(x):\n    return 2\n"
    tests = (
        "assert len([0]) == 1\n"  # the judge's len, though the program deleted its own and defined one
        "assert f() == 5 and x == 5\nx = 7\nassert x == 7 and f() == 5\n"  # the program's x until the tests bind theirs
        "from math import *\nassert sqrt(4) == 2.0\n"  # a star import binds the module's names
        "def check():\n    global y\n    y = 1\ncheck()\nassert y == 1\n"
    )
    assert sandbox.run(program, tests, limits=LIMITS, entry_point="f").passed
    missing = sandbox.run("def total(xs):\n    return 0\n", "assert sum([1, 2]) == 3", limits=LIMITS, entry_point="sum")
    assert (missing.status, missing.error_type) == ("error", "NameError") and "'sum'" in missing.message
    # an entry point the program deletes half way does not fall back to the builtin
    vanishing = "def sum(xs):\n    del globals()['sum']\n    return 0\n"
    result = sandbox.run(vanishing, "assert sum([1]) == 0\nassert sum([1, 2]) == 3", limits=LIMITS, entry_point="sum")
    assert result.error_type == "NameError"


def test_a_context_manager_of_the_programs_never_swallows_a_tests_assertion():
    program = "class Quiet:\n    def __enter__(self):\n        return self\n    def __exit__(self, *exc):\n        return True\n"
    result = sandbox.run(program, "with Quiet():\n    assert 1 == 2\n", limits=LIMITS, entry_point="Quiet")
    assert result.status == "failed"
    assert sandbox.run(program, "with Quiet():\n    raise ValueError\n", limits=LIMITS).passed  # its own business


# -- 4. one sample cannot take the batch down --------------------------------------------------------


def test_a_deeply_nested_program_gets_a_verdict_of_its_own_and_the_batch_is_scored():
    deep = CORRECT + "x = " + "+".join(["1"] * 700) + "\n"  # parses; the old recursive scan raised
    deeper = CORRECT + "x = " + "+".join(["1"] * 5000) + "\n"  # does not even parse
    attributes = CORRECT + "y = os" + ".path" * 2000 + "\n"
    problem = Problem("add", "", "add", "assert add(1, 2) == 3")
    report = evaluate([problem], [[deep, deeper, attributes, CORRECT]], limits=LIMITS, workers=2)
    statuses = [(s.status, s.error_type) for s in report.samples]
    assert statuses[0] == ("passed", None) and statuses[3] == ("passed", None)
    # too deep for Python's parser at the default recursion limit: here, or in the sandbox when this
    # process runs with a higher limit (some libraries raise it)
    assert statuses[1] in (("error", "SyntaxError"), ("error", "RecursionError")) and statuses[2][0] == "error"
    assert all(f.message.endswith("nested too deeply for Python's parser") for f in safety(deeper))
    risky = "x = " + "+".join(["1"] * 700) + "+ eval('1')\ny = os" + ".path" * 900 + "\n"  # deep, and still scanned
    found = check_many([(deep, ""), (risky, "")], ["safety"])
    assert [[finding.line for finding in f["safety"]] for f in found] == [[], [1]]


# -- 5. the judge is bounded -------------------------------------------------------------------------


def test_an_answer_over_the_judges_limit_fails_with_a_message():
    flood = (  # a frame header announcing more than the judge reads, on every descriptor: one is the channel
        "import os, struct\ndef add(a, b):\n    for fd in range(3, 64):\n        try:\n"
        f"            os.write(fd, struct.pack('<I', {wire.MAX_REPLY + 1}) + b'L')\n"
        "        except OSError:\n            pass\n    return 3\n"
    )
    result = sandbox.run(flood, "assert add(1, 2) == 3", limits=LIMITS, entry_point="add")
    assert (result.status, result.error_type) == ("failed", "ReplyTooLarge"), result
    assert f"at most {wire.MAX_REPLY:,} bytes" in result.message
    honest = sandbox.run("def add(a, b):\n    return [0] * (1 << 20)\n", "assert add(1, 2)", limits=LIMITS)
    assert (honest.status, honest.error_type) == ("error", "OverflowError")  # the program's own end refuses


def test_the_judge_has_a_cpu_limit():
    result = sandbox.run("", "while True:\n    pass\n", limits=sandbox.Limits(timeout_s=20, cpu_s=1))
    assert (result.status, result.error_type) == ("killed", "SIGXCPU") and "the judge" in result.message
    assert result.duration_s < 10


# -- 6. every correct program passes ------------------------------------------------------------------

MBPP_ROWS = [  # MBPP's format, with solutions the old judge failed and plain Python passes
    {"task_id": 901, "text": "Write a function to count the characters of a string.",
     "code": "from collections import Counter\ndef char_counts(s):\n    return Counter(s)",
     "test_list": ["assert char_counts('abca') == {'a': 2, 'b': 1, 'c': 1}", "assert char_counts('') == {}"],
     "test_setup_code": ""},
    {"task_id": 902, "text": "Write a function to find the sum of all the digits of the numbers in a list.",
     "code": "def sum(nums):\n    total = 0\n    for n in nums:\n        for c in str(abs(n)):\n            total += int(c)\n    return total",
     "test_list": ["assert sum([12, 3]) == 6", "assert sum([]) == 0"], "test_setup_code": ""},
    {"task_id": 903, "text": "Write a function to group words by their first letter.",
     "code": "from collections import defaultdict, OrderedDict\ndef group_words(words):\n    out = defaultdict(list)\n"
             "    for w in words:\n        out[w[0]].append(w)\n    return OrderedDict(sorted(out.items()))",
     "test_list": ["assert group_words(['ab', 'b', 'aa']) == {'a': ['ab', 'aa'], 'b': ['b']}",
                   "assert list(group_words(['b', 'a'])) == ['a', 'b']"], "test_setup_code": ""},
    {"task_id": 904, "text": "Write a function to return a point's coordinates as a named tuple.",
     "code": "from collections import namedtuple\nPoint = namedtuple('Point', 'x y')\ndef to_point(x, y):\n    return Point(x, y)",
     "test_list": ["assert to_point(1, 2) == (1, 2)", "assert to_point(1, 2).y == 2 and to_point(0, 0) + (1,) == (0, 0, 1)"],
     "test_setup_code": ""},
    {"task_id": 905, "text": "Write a function to find the largest of three numbers by absolute value.",
     "code": "def max(a, b, c):\n    return a if abs(a) >= abs(b) and abs(a) >= abs(c) else b if abs(b) >= abs(c) else c",
     "test_list": ["assert max(-5, 3, 2) == -5", "assert math.isclose(max(0.1, -0.5, 0.2), -0.5)"],
     "test_setup_code": "import math"},
]


def test_mbpp_format_solutions_with_a_counter_or_a_builtins_name_pass():
    problems = mbpp_problems(MBPP_ROWS)
    assert [p.entry_point for p in problems] == ["char_counts", "sum", "group_words", "to_point", "max"]
    report = evaluate(problems, [[p.reference] for p in problems], limits=LIMITS, workers=2)
    assert [(s.task_id, s.status, s.message) for s in report.samples if s.status != "passed"] == []
    wrong = evaluate(problems, [["def sum(xs):\n    return -1\ndef max(*a):\n    return -1\n"] for _ in problems], limits=LIMITS, workers=2)
    assert wrong.metrics["pass@1"] == 0.0  # and a program that lacks the entry point falls back to no builtin
    with pytest.raises(KeyError, match="test_list"):
        mbpp_problems([{"text": "t", "code": "c"}])
