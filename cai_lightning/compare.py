"""Compare two evaluations of the same tasks: is B better than A, and by how much more than chance?

    cai-lightning-compare A/execution_tasks.jsonl B/execution_tasks.jsonl [--resamples 2000] [--seed 0]
    python -m cai_lightning.compare A/execution_tasks.jsonl B/execution_tasks.jsonl

Each file is what ``ExecutionEval`` writes in a run's folder (``execution_<suite>.jsonl``, one sample a line,
by :meth:`~cai_lightning.evaluation.Report.write_jsonl`). For each file it prints pass@k for k = 1 up to the
samples per task, the difference B − A, and a paired bootstrap 95% interval of that difference: the tasks
are resampled with replacement (the same draw for A and B, so a task's difficulty cancels out), and the
interval is the 2.5th and 97.5th percentiles of the mean difference over the resamples. An interval that
excludes 0 says the difference is larger than the choice of tasks explains; it says nothing about the
sampling of completions within a task beyond what each task's pass@k already averages.

Tasks are matched by ``task_id``. A task present in one file only is named and left out of every figure;
pass@k is reported only for the k that every task left in both files has samples for.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cai_lightning.errors import DataError
from cai_lightning.evaluation import pass_at_k

BOOTSTRAP = 2000  # resamples of the tasks for each interval


def interval(values: Sequence[float], seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float, float]:
    """Mean of ``values`` (one per task) and its 95% bootstrap interval: the 2.5th and 97.5th percentiles of
    the means of ``resamples`` resamples of the tasks with replacement, drawn from ``random.Random(seed)``.
    Raises ValueError for no values."""
    if not values:
        raise ValueError("a bootstrap interval needs at least one value")
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return statistics.fmean(values), means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def paired(
    a: dict[str, float], b: dict[str, float], seed: int = 0, resamples: int = BOOTSTRAP,
) -> tuple[float, float, float]:
    """Mean difference ``a - b`` over the tasks both have (keys), with its paired 95% bootstrap interval: the
    tasks are resampled, and each resampled task brings its own difference."""
    return interval([a[t] - b[t] for t in sorted(a.keys() & b.keys())], seed, resamples)


def read_samples(path: str | Path) -> dict[str, list[dict]]:
    """The samples of an ``execution_<suite>.jsonl`` by ``task_id``, in file order. Raises
    :class:`~cai_lightning.errors.DataError` naming the file and line for a missing file, a line that is not
    a JSON object with ``task_id`` and ``status``, or a sample (``task_id``, ``sample``) seen twice (two
    tasks that share an id cannot be told apart)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass the execution_<suite>.jsonl files of two runs")
    by_task: dict[str, list[dict]] = defaultdict(list)
    seen: dict[tuple[str, object], int] = {}
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {number}: not JSON ({err.msg})") from None
            if not isinstance(sample, dict) or "task_id" not in sample or "status" not in sample:
                raise DataError(
                    f"{path} line {number}: a sample needs task_id and status, as Report.write_jsonl writes them"
                )
            key = (str(sample["task_id"]), sample.get("sample", number))
            if key in seen:
                raise DataError(
                    f"{path} line {number}: sample {key[1]} of task {key[0]} again (first on line {seen[key]}); "
                    "give each task an id of its own"
                )
            seen[key] = number
            by_task[key[0]].append(sample)
    if not by_task:
        raise DataError(f"{path}: no samples")
    return dict(by_task)


def pass_at_k_by_task(by_task: dict[str, list[dict]], ks: Sequence[int]) -> dict[int, dict[str, float]]:
    """``{k: {task_id: pass@k}}``, each task's from its own ``n`` samples (``status == "passed"``)."""
    scores: dict[int, dict[str, float]] = {k: {} for k in ks}
    for task, samples in by_task.items():
        n, c = len(samples), sum(s["status"] == "passed" for s in samples)
        for k in ks:
            scores[k][task] = pass_at_k(n, c, k)
    return scores


@dataclass
class Row:
    """One metric of the comparison: A's and B's mean over the shared tasks, and B − A with its interval."""

    metric: str
    a: float
    b: float
    difference: float
    low: float
    high: float


@dataclass
class Comparison:
    """What :func:`compare` found: the figures over the tasks in both files, and the tasks left out."""

    a_path: str
    b_path: str
    tasks: int  # in both files: every figure is over these
    samples_per_task: int  # the fewest any of them has, in either file
    rows: list[Row]
    only_in_a: list[str]
    only_in_b: list[str]
    resamples: int
    seed: int

    def table(self) -> str:
        lines = [
            f"A: {self.a_path}",
            f"B: {self.b_path}",
            f"{self.tasks} tasks in both, at least {self.samples_per_task} samples each; "
            f"paired bootstrap over tasks: {self.resamples} resamples, seed {self.seed}",
        ]
        for side, left_out in (("A", self.only_in_a), ("B", self.only_in_b)):
            if left_out:
                lines.append(f"left out, only in {side} ({len(left_out)}): {', '.join(left_out)}")
        lines += ["", f"{'metric':8s}  {'A':>6s}  {'B':>6s}  {'B - A':>7s}  95% interval of B - A"]
        lines += [
            f"{r.metric:8s}  {r.a:6.4f}  {r.b:6.4f}  {r.difference:+7.4f}  [{r.low:+.4f}, {r.high:+.4f}]"
            for r in self.rows
        ]
        return "\n".join(lines)


def compare(a_path: str | Path, b_path: str | Path, resamples: int = BOOTSTRAP, seed: int = 0) -> Comparison:
    """pass@k of the samples in ``a_path`` and ``b_path`` over the tasks both hold, for every k from 1 to the
    fewest samples any of those tasks has, and B − A with its paired bootstrap interval (:func:`paired`,
    the same ``seed`` for every k). Raises :class:`~cai_lightning.errors.DataError` for unreadable files
    (:func:`read_samples`) or files that share no task, ValueError for ``resamples < 1``."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    read_a, read_b = read_samples(a_path), read_samples(b_path)
    shared = sorted(read_a.keys() & read_b.keys())
    if not shared:
        raise DataError(f"{a_path} and {b_path} share no task_id: they are not evaluations of the same tasks")
    a, b = {t: read_a[t] for t in shared}, {t: read_b[t] for t in shared}
    n = min(len(samples) for side in (a, b) for samples in side.values())
    ks = list(range(1, n + 1))
    scores_a, scores_b = pass_at_k_by_task(a, ks), pass_at_k_by_task(b, ks)
    rows = []
    for k in ks:
        difference, low, high = paired(scores_b[k], scores_a[k], seed, resamples)
        mean_a, mean_b = statistics.fmean(scores_a[k].values()), statistics.fmean(scores_b[k].values())
        rows.append(Row(f"pass@{k}", mean_a, mean_b, difference, low, high))
    return Comparison(
        str(a_path), str(b_path), len(shared), n, rows,
        sorted(read_a.keys() - read_b.keys()), sorted(read_b.keys() - read_a.keys()), resamples, seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``cai-lightning-compare`` and ``python -m cai_lightning.compare``: prints the
    comparison's table (:func:`compare` returns its figures). A bad file or flag is one message on stderr
    and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="cai-lightning-compare",
        description="pass@k of two execution_<suite>.jsonl files on the same tasks, B - A, and a paired "
        "bootstrap 95% interval of the difference over tasks.",
    )
    parser.add_argument("a", help="the baseline's execution_<suite>.jsonl")
    parser.add_argument("b", help="the execution_<suite>.jsonl to compare with it")
    parser.add_argument(
        "--resamples", type=int, default=BOOTSTRAP, help="bootstrap resamples of the tasks (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the resampling (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error(f"--resamples must be at least 1, got {args.resamples}")
    try:
        comparison = compare(args.a, args.b, args.resamples, args.seed)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(comparison.table())


if __name__ == "__main__":
    main()
