"""The paired comparison of two evaluations: figures checked against hand-computed ones, tasks in one file
only named and left out, bad files a one-line error."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

from cai_lightning import compare
from cai_lightning.evaluation import Report, SampleResult

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, passes: dict[str, list[bool]]) -> Path:
    """An execution_<suite>.jsonl as ExecutionEval writes it: ``passes[task]`` says which samples passed."""
    samples = [
        SampleResult(task, j, "...", "passed" if ok else "failed", None if ok else "AssertionError", "", True, 0.1,
                     failure="passed" if ok else "assertion")
        for task, oks in passes.items() for j, ok in enumerate(oks)
    ]
    Report({}, {}, samples).write_jsonl(path)
    return path


# Two samples per task. A passes 0, 0, 1, 0 of them; B 1, 2, 2, 1.
A = {"t0": [False, False], "t1": [False, False], "t2": [True, False], "t3": [False, False]}
B = {"t0": [True, False], "t1": [True, True], "t2": [True, True], "t3": [False, True]}


def test_b_clearly_better_gives_the_hand_computed_figures_and_an_interval_above_zero(tmp_path, capsys):
    a, b = _write(tmp_path / "a.jsonl", A), _write(tmp_path / "b.jsonl", B)
    compare.main([str(a), str(b), "--seed", "3"])
    out = capsys.readouterr().out
    # pass@1 per task: A 0, 0, 1/2, 0 (mean 1/8); B 1/2, 1, 1, 1/2 (mean 3/4); B - A per task .5, 1, .5, .5
    # pass@2 per task: A 0, 0, 1, 0 (mean 1/4); B 1, 1, 1, 1 (mean 1); B - A per task 1, 1, 0, 1
    low1, high1 = compare.interval([0.5, 1.0, 0.5, 0.5], seed=3)[1:]
    low2, high2 = compare.interval([1.0, 1.0, 0.0, 1.0], seed=3)[1:]
    assert f"pass@1    0.1250  0.7500  +0.6250  [{low1:+.4f}, {high1:+.4f}]" in out
    assert f"pass@2    0.2500  1.0000  +0.7500  [{low2:+.4f}, {high2:+.4f}]" in out
    assert "pass@3" not in out  # k stops at the samples per task
    assert 0.5 <= low1 < high1 <= 1.0  # every task's difference is at least 0.5: the interval is above zero
    assert "4 tasks in both, at least 2 samples each" in out and "2000 resamples, seed 3" in out
    assert "left out" not in out


def test_identical_files_differ_by_zero_with_a_degenerate_interval(tmp_path, capsys):
    a, b = _write(tmp_path / "a.jsonl", A), _write(tmp_path / "b.jsonl", A)
    compare.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert "pass@1    0.1250  0.1250  +0.0000  [+0.0000, +0.0000]" in out
    assert "pass@2    0.2500  0.2500  +0.0000  [+0.0000, +0.0000]" in out


def test_tasks_in_one_file_only_are_named_and_left_out(tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", {**A, "only-a": [True, True]})
    b = _write(tmp_path / "b.jsonl", {"only-b1": [False, False], **B, "only-b2": [True, False]})
    result = compare.compare(a, b)
    assert (result.only_in_a, result.only_in_b, result.tasks) == (["only-a"], ["only-b1", "only-b2"], 4)
    same = compare.compare(_write(tmp_path / "a4.jsonl", A), _write(tmp_path / "b4.jsonl", B))
    assert result.rows == same.rows  # the figures are those of the shared tasks alone
    compare.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert "left out, only in A (1): only-a" in out
    assert "left out, only in B (2): only-b1, only-b2" in out


def test_the_fewest_samples_of_a_shared_task_bound_k(tmp_path):
    a = _write(tmp_path / "a.jsonl", {"t0": [True, False, False], "t1": [False, False, True]})
    b = _write(tmp_path / "b.jsonl", {"t0": [True, True], "t1": [False, True]})
    result = compare.compare(a, b)
    assert [r.metric for r in result.rows] == ["pass@1", "pass@2"] and result.samples_per_task == 2
    assert result.rows[0].a == pytest.approx(1 / 3) and result.rows[0].b == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ('{"task_id": "t0", "status": "passed"}\nnot json\n', "line 2: not JSON"),
        ('{"task_id": "t0"}\n', "line 1: a sample needs task_id and status"),
        ('{"task_id": "t0", "sample": 0, "status": "passed"}\n' * 2,
         "line 2: sample 0 of task t0 again (first on line 1)"),
        ('{"task_id": "zz", "sample": 0, "status": "passed"}\n', "share no task_id"),
    ],
)
def test_bad_files_exit_2_with_a_message_naming_them(tmp_path, capsys, content, expected):
    a = _write(tmp_path / "a.jsonl", A)
    b = tmp_path / "b.jsonl"
    if content is not None:
        b.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        compare.main([str(a), str(b)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "b.jsonl" in err


def test_the_command_is_installed_and_runs_as_a_module(tmp_path):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["cai-lightning-compare"].partition(":")
    assert getattr(import_module(module), function) is compare.main
    a, b = _write(tmp_path / "a.jsonl", A), _write(tmp_path / "b.jsonl", B)
    done = subprocess.run([sys.executable, "-m", "cai_lightning.compare", str(a), str(b), "--resamples", "50"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "pass@1    0.1250  0.7500  +0.6250" in done.stdout and "50 resamples" in done.stdout
