"""Generated tests that independent solutions agree on: how a fix of code that runs cleanly but wrongly is
proven on a row without unit tests, and why a wrong test or a lone solution proves nothing."""

from __future__ import annotations

import pytest

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.generated_tests import agreed, parse_tests, signatures
from cai_lightning.constitution.guards import Behaviour, compare, shown
from cai_lightning.constitution.report import format_summary
from cai_lightning.constitution.stage import ConstitutionStage
from cai_lightning.settings import Revise
from cai_lightning.errors import ConfigError

CONSTITUTION = Constitution.load(DEFAULT_PATH)
OFF_BY_ONE = 'def sum_to_n(n):\n    """Sum 1..n."""\n    return sum(range(1, n))\n\n\nprint(sum_to_n(4))\n'
FIXED = 'def sum_to_n(n):\n    """Sum 1..n."""\n    return sum(range(1, n + 1))\n\n\nprint(sum_to_n(4))\n'
TESTS = "```python\nassert sum_to_n(10) == 55\nassert sum_to_n(0) == 0\nassert sum_to_n(3) == 7\n```"  # the last is wrong
SOLUTION = "```python\ndef sum_to_n(n):\n    return n * (n + 1) // 2\n```"
LOOPING = "```python\ndef sum_to_n(n):\n    total = 0\n    for k in range(n + 1):\n        total += k\n    return total\n```"


def fenced(code: str) -> str:
    return f"```python\n{code}```\n"


class Critic:
    """Writes the scripted tests, solutions and revisions, each prompt told apart by its request."""

    name = "scripted"
    prompts_truncated = 0

    def __init__(self, tests: list[str], solutions: list[str], revisions: list[str]) -> None:
        self.replies = {"tests": tests, "solutions": solutions, "revisions": revisions}
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_new_tokens, n=1, **_):
        self.prompts += prompts
        if "assert statements that a correct solution passes" in prompts[0]:
            kind = "tests"
        elif "Solve the task in Python" in prompts[0]:
            kind = "solutions"
        elif prompts[0].endswith("### Critique:\n"):
            return [["c"] for _ in prompts]
        else:
            kind = "revisions"
        return [(self.replies[kind] + [""] * n)[:n] for _ in prompts]


def run(tmp_path, code, tests, solutions, revisions, samples=2):
    critic = Critic(tests, solutions, revisions)
    settings = Revise(principles="sample", candidates=max(len(revisions), 1), generated_tests=samples, fixers=False, workers=2)
    stage = ConstitutionStage(CONSTITUTION, settings, tmp_path / "stage", lambda: critic)
    row = {"instruction": "Return the sum of the integers from 1 to n.", "input": "", "output": code, "tests": "",
           "entry_point": "", "task_id": ""}
    [record] = stage.run([row], progress=False)
    return stage, record, critic


def test_tests_are_read_from_asserts_on_the_rows_functions_with_literals_only():
    reply = ("Here they are:\n```python\nassert f(1) == 2\nassert f(2)==[1, 2]\nassert not f(3)\nassert f(4) is None\n"
             "assert g(1) == 1\nassert f(x) == 1\nassert f(1) == 3\nassert f(5) is 5\nassert f(6) ==\n```")
    assert parse_tests([reply], {"f"}) == {"f(1)": {"= 2", "= 3"}, "f(2)": {"= [1, 2]"}, "f(3)": {"= False"}, "f(4)": {"= None"}}
    assert signatures("def f(a, b=2, *c, d: int = 3) -> int:\n    return a\n\n\nclass K:\n    def m(self): pass\n") == {
        "f": "def f(a, b=2, *c, d: int=3) -> int"
    }
    assert shown("[1, (2,), {3}]") == "= [1, (2,), {3}]" and shown("print(1)") is None


def test_a_value_is_agreed_only_when_a_test_expects_it_and_most_solutions_return_it():
    tests = {"f(1)": {"= 2", "= 3"}, "f(2)": {"= 4"}, "f(3)": {"= 9"}}
    solved = [{"f(1)": "= 2", "f(2)": "= 4", "f(3)": "= 6"}, {"f(1)": "= 2", "f(2)": "= 5", "f(3)": "= 6"},
              {"f(1)": "= 2", "f(2)": "! ValueError", "f(3)": "= 6"}]
    # f(1): three solutions and a test agree; f(2): one solution only; f(3): the solutions agree, no test does
    assert agreed(tests, solved, 3) == {"f(1)": "= 2"}
    assert agreed(tests, solved[:1], 1) == {}  # one solution is never agreement
    assert agreed({"f(1)": {"! ValueError"}}, [{"f(1)": "! ValueError"}] * 2, 2) == {}  # only returned values


def test_a_clean_but_wrong_function_is_fixed_when_agreed_tests_prove_it(tmp_path):
    stage, record, critic = run(tmp_path, OFF_BY_ONE, [TESTS, TESTS], [SOLUTION, LOOPING], [fenced(FIXED)])
    # the wrong expectation sum_to_n(3) == 7 is no solution's answer: not agreed
    assert record["generated_tests"]["written"]["sum_to_n(3)"] == ["= 7"]
    assert [seen["sum_to_n(3)"] for seen in record["generated_tests"]["solutions"]] == ["= 6", "= 6"]
    assert record["agreed_tests"] == {"sum_to_n(10)": "55", "sum_to_n(0)": "0"} and record["agreed_tests_missed"] == 1
    assert "sum_to_n(10) returns 45, but the generated tests that independent solutions agree on expect 55" in "\n".join(
        record["findings_before"]["correctness"])
    # neither the tests nor the solutions were shown the row's code
    asked = [p for p in critic.prompts if "A correct solution defines" in p or "Solve the task" in p]
    assert asked and all("range(1, n)" not in p and "def sum_to_n(n)" in p for p in asked)
    [step] = record["steps"]
    assert step["principle"] == "correctness" and step["accepted"] == 0 and record["final"] == FIXED
    assert step["candidates"][0]["behaviour"].startswith("fixed: passes the agreed generated tests it failed (sum_to_n(10))")
    assert not record["findings_after"]["correctness"]
    summary = stage.summarize([record])
    assert summary["agreed_tests"] == {"rows": 1, "missed": 1}
    assert "generated tests: agreed for 1 row(s), of which 1 missed one" in format_summary(summary)


def test_a_revision_that_breaks_an_agreed_test_or_another_function_is_refused(tmp_path):
    two = OFF_BY_ONE.replace("\n\nprint", "\n\ndef twice(x):\n    return 2 * x\n\n\nprint(twice(3))\nprint")
    breaks_one = two.replace("range(1, n))", "range(1, n + 1)) if n > 0 else -1")
    breaks_other = two.replace("range(1, n)", "range(1, n + 1)").replace("2 * x", "3 * x")
    _, record, _ = run(tmp_path, two, [TESTS, TESTS], [SOLUTION, LOOPING], [fenced(breaks_one), fenced(breaks_other)])
    assert record["agreed_tests_missed"] == 1
    verdicts = [c["behaviour"] for c in record["steps"][0]["candidates"]]
    assert verdicts[0].startswith("changed: sum_to_n(0) returns -1 where it passed the agreed test (0)")
    assert verdicts[1] == "changed: twice(3) = 9 (was = 6)"  # the fix of sum_to_n frees sum_to_n only
    assert record["final"] == two


def test_without_agreement_a_clean_rows_behaviour_may_not_change(tmp_path):
    # the solutions disagree (one is the row's own bug): nothing agreed, nothing found, the row is not revised
    lone = "```python\ndef sum_to_n(n):\n    return sum(range(1, n))\n```"
    _, record, _ = run(tmp_path, OFF_BY_ONE, [TESTS, TESTS], [SOLUTION, lone], [fenced(FIXED)])
    assert record["agreed_tests"] == {"sum_to_n(0)": "0"} and not record["findings_before"]["correctness"]
    assert all(step["principle"] != "correctness" for step in record["steps"]) and record["final"] != FIXED


def test_compare_keeps_the_other_functions_and_needs_every_agreed_test():
    before = Behaviour("clean", stdout="6\n", probes={"s(10)": "= 45", "s(1)": "= 0", "t(2)": "= 4"})
    expected = (("s(10)", "= 55"), ("s(1)", "= 1"))
    half = Behaviour("clean", stdout="6\n", probes={"s(10)": "= 55", "s(1)": "= 0", "t(2)": "= 4"})
    assert compare(before, half, may_fix=True, expected=expected) == ("changed", "s(10) = 55 (was = 45)")  # s(1) still wrong
    whole = Behaviour("clean", stdout="10\n", probes={"s(10)": "= 55", "s(1)": "= 1", "t(2)": "= 4"})
    assert compare(before, whole, may_fix=True, expected=expected)[0] == "fixed"
    assert compare(before, whole, may_fix=False, expected=expected)[0] == "changed"  # not under correctness


@pytest.mark.parametrize("samples", [1, -1])
def test_generated_tests_need_two_solutions(samples):
    with pytest.raises(ConfigError, match="generated_tests"):
        Revise(generated_tests=samples)
    with pytest.raises(ConfigError, match="do_sample"):
        Revise(generated_tests=2, do_sample=False, candidates=1)
