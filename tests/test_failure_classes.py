"""Failure classes: a program of each class, run through the real sandbox, gets that class; the classes add up
to the samples; an exception keeps its module-qualified class; a failing test is named by its own line."""

from __future__ import annotations

import json

import pytest

from cai_lightning import evaluation, sandbox
from cai_lightning.evaluation import FAILURE_CLASSES, Problem, SampleResult, evaluate, failure_class
from cai_lightning.sandbox import wire

TESTS = "assert f(1) == 2\nassert f(2) == 3"
# (program, its class, its error_qualname) for a task asking for f(x) = x + 1
PROGRAMS = [
    ("def f(x):\n    return x + 1\n", "passed", None),
    ("def f(x):\n    return eval(str(x)) + 1\n", "passed", None),  # flagged by the scan, and it passes
    ("def f(x):\n    return 2 if x == 1 else 0\n", "assertion", "AssertionError"),
    ("def f(x):\n    assert x > 5, 'too small'\n    return x + 1\n", "assertion", "AssertionError"),
    ("import re\n\ndef f(x):\n    return re.compile('(')\n", "exception", "re.error"),
    ("import json\n\ndef f(x):\n    return json.loads('not json')\n", "exception", "json.decoder.JSONDecodeError"),
    ("def f(x):\n    raise ValueError(x)\n", "exception", "ValueError"),
    ("class Empty(Exception):\n    pass\n\ndef f(x):\n    raise Empty(x)\n", "exception", "__sandbox__.Empty"),
    ("def f(x):\n    return x + 'a'\n", "exception", "TypeError"),  # a TypeError in the body: not the signature
    ("def g(a):\n    return a\n\ndef f(x):\n    return g(x, 1)\n", "exception", "TypeError"),  # another function's
    ("def f(x):\n    return x + 1\n\nf(1, 2)\n", "exception", "TypeError"),  # the program's own wrong call
    ("def g(x):\n    return x + 1\n", "wrong_name_or_signature", "NameError"),
    ("print(f(1))\n", "wrong_name_or_signature", "NameError"),  # Python's own NameError for the entry point
    ("def f(x, y):\n    return x + y\n", "wrong_name_or_signature", "TypeError"),
    ("def f():\n    return 2\n", "wrong_name_or_signature", "TypeError"),
    ("def f(x)\n    return x + 1\n", "syntax", "SyntaxError"),
    ("def f(x):\n    while True:\n        pass\n", "timeout", "SIGXCPU"),  # the CPU-time limit
    ("import time\n\ndef f(x):\n    time.sleep(30)\n", "timeout", None),  # the wall clock
    ("def f(x):\n    return eval(str(x))\n", "unsafe", "AssertionError"),  # flagged, and it fails
]
LIMITS = sandbox.Limits(timeout_s=3.0, cpu_s=1)


@pytest.mark.slow
def test_each_program_gets_its_class_and_the_classes_add_up(tmp_path):
    problems = [Problem(f"t{i}", "", "f", TESTS) for i in range(len(PROGRAMS))]
    problems.append(Problem("cls", "", "Stack", "assert Stack([1]).items == [1]"))
    completions = [[program] for program, _, _ in PROGRAMS] + [["class Stack:\n    pass\n"]]
    report = evaluate(problems, completions, limits=LIMITS, workers=2)

    got = [(s.failure, s.error_qualname) for s in report.samples]
    assert got == [(cls, qualname) for _, cls, qualname in PROGRAMS] + [("wrong_name_or_signature", "TypeError")]
    assert report.samples[-1].message.startswith("Stack() takes no arguments")  # the constructor refuses
    classes = report.classes
    assert list(classes) == list(FAILURE_CLASSES)
    assert sum(classes.values()) == len(report.samples) == len(PROGRAMS) + 1
    assert classes["passed"] == sum(s.status == "passed" for s in report.samples) == 2
    assert classes["passed"] / len(report.samples) == report.metrics["pass@1"]  # one sample a task
    assert report.metrics["unsafe"] == 2 / len(report.samples)  # findings are counted whether or not it passed
    assert report.errors["re.error"] == 1 and report.errors["json.decoder.JSONDecodeError"] == 1

    table = report.table()
    assert all(f"class: {name}" in table for name in FAILURE_CLASSES)
    assert "failed: re.error" in table
    path = tmp_path / "execution_tasks.jsonl"
    report.write_jsonl(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["failure"], r["error_qualname"]) for r in records] == got


def test_samples_never_run_are_classed_too():
    good = Problem("ok", "", "f", "assert f() == 1")
    problems = [Problem("no-tests", "", "f", ""), good, good]
    report = evaluate(problems, [["def f():\n    return 1\n"], ["def f(:\n"], ["#" * 200_000]])
    assert [(s.failure, s.error_qualname) for s in report.samples] == [
        ("exception", "BadTask"), ("syntax", "SyntaxError"), ("exception", "TooLong"),
    ]
    assert sum(report.classes.values()) == 3


def test_a_failing_test_is_named_by_its_own_line():
    """The message and tests_line count the lines of the task's tests from 1, as an editor does."""
    problem = Problem("t", "", "f", TESTS)
    [[sample]] = evaluation.execute([problem], [["def f(x):\n    return 2 if x == 1 else 0\n"]], limits=LIMITS)
    assert sample.tests_line == 2
    assert sample.message.endswith("(tests line 2: assert f(2) == 3)")


def test_the_rules_on_results_the_sandbox_can_give():
    def sample(status, error_type, message="", tests_line=1, qualname=None, **fields):
        return SampleResult("t", 0, "", status, error_type, message, True, 0.0, error_qualname=qualname or error_type,
                            tests_line=tests_line, **fields)

    assert failure_class(sample("killed", "MemoryError"), "f") == "exception"
    assert failure_class(sample("killed", "SIGSEGV"), "f") == "exception"
    assert failure_class(sample("failed", "ReplyTooLarge"), "f") == "exception"
    assert failure_class(sample("error", "EarlyExit"), "f") == "exception"
    # a class of the program's that is named like a builtin is not the builtin
    assert failure_class(sample("failed", "AssertionError", qualname="__sandbox__.AssertionError"), "f") == "exception"
    refusal = "f() takes 1 positional argument but 2 were given"
    assert failure_class(sample("error", "TypeError", refusal), "f") == "wrong_name_or_signature"
    assert failure_class(sample("error", "TypeError", refusal, qualname="__sandbox__.TypeError"), "f") == "exception"
    assert failure_class(sample("error", "TypeError", refusal, tests_line=0), "f") == "exception"
    assert failure_class(sample("error", "TypeError", refusal), "ff") == "exception"
    assert failure_class(sample("error", "TypeError", "C.__init__() missing 1 required positional argument: 'x'"), "C") \
        == "wrong_name_or_signature"
    assert failure_class(sample("error", "NameError", "name 'g' is not defined"), "f") == "exception"
    assert failure_class(sample("error", "NameError", "name 'f' is not defined. Did you mean: 'g'?"), "f") \
        == "wrong_name_or_signature"
    assert failure_class(sample("timeout", None, tests_line=0), "f") == "timeout"
    assert failure_class(sample("timeout", None, safety=["eval"]), "f") == "unsafe"


def test_qualified_names_of_exception_classes():
    import json.decoder

    class Weird(Exception):
        pass

    Weird.__module__ = 7  # what a program's class can do to itself: its __name__ is what is left
    assert wire.qualified_name(ValueError) == "ValueError"
    assert wire.qualified_name(json.decoder.JSONDecodeError) == "json.decoder.JSONDecodeError"
    assert wire.qualified_name(Weird) == "Weird"
