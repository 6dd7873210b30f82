"""Sandbox throughput: the same (program, tests) pairs run bare, in the previous sandbox and in today's,
side by side in one run.

    python bench/sandbox_throughput.py [--programs 64] [--workers N] [--repeats 3] [--baseline REF] [--smoke]

The pairs are the reference solutions and tests of the task set shipped in the package, cycled to
``--programs``. Every row must pass all of them, or the timing would be of something else.

Rows (each run ``--repeats`` times in turn, so drift on a shared machine falls on all rows alike; the
table shows medians):
  bare python        one `python -I -S -c "<program>\\n<tests>"` subprocess per pair, no isolation (same
                     interpreter flags, so only the sandbox differs)
  previous sandbox   `run_many` of the one-process sandbox (program and tests in one interpreter, an audit
                     hook), loaded from git at ``--baseline`` (default: the parent of the commit that
                     replaced cai_lightning/sandbox.py); left out when git or that commit is missing
  judge sandbox      today's `sandbox.run_many`: a judge process and an isolated program process per pair

Columns: ``overhead`` is what a sandbox adds per program over bare python at the same number of workers, in
worker-milliseconds: (sandbox seconds - bare seconds) x workers / programs; ``overhead / previous`` is the judge sandbox's
overhead over the previous sandbox's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cai_lightning import sandbox
from harness import record
from report import sandbox_throughput as table

TASKS = Path(sandbox.__file__).parent.parent / "tasks"
REPO = Path(__file__).resolve().parents[1]


def load_jobs(n: int) -> list[tuple[str, str, str]]:
    """``n`` (program, tests, entry point) jobs: the shipped tasks' references, cycled."""
    rows = [json.loads(line) for path in sorted(TASKS.glob("*.jsonl")) for line in path.read_text().splitlines() if line.strip()]
    jobs = [(r["output"], r["tests"], r.get("entry_point") or "") for r in rows if r.get("tests")]
    return [jobs[i % len(jobs)] for i in range(n)]


def previous_sandbox(ref: str | None):
    """The one-process sandbox module as it was at ``ref`` (None: just before it was replaced), or None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        if ref is None:
            ref = git("log", "-1", "--format=%H", "--diff-filter=D", "--", "cai_lightning/sandbox.py") + "^"
        source = git("show", f"{ref}:cai_lightning/sandbox.py")
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="previous-sandbox-")) / "previous_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def bare(jobs: list[tuple[str, str, str]], workers: int) -> int:
    def one(job: tuple[str, str, str]) -> bool:
        program, tests, _ = job
        done = subprocess.run([sys.executable, "-I", "-S", "-c", f"{program}\n{tests}\n"], capture_output=True, check=False)
        return done.returncode == 0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, jobs))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64, help="pairs to run per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of the parallel rows")
    parser.add_argument("--repeats", type=int, default=3, help="times each row runs, in turn")
    parser.add_argument("--baseline", default=None, help="git ref of the previous sandbox (default: just before the judge)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check of the whole machinery (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.programs, args.repeats = 4, 1
    jobs = load_jobs(args.programs)
    runners = {"bare python": bare, "judge sandbox": lambda j, w: sum(r.passed for r in sandbox.run_many(j, workers=w))}
    previous = previous_sandbox(args.baseline)
    if previous is not None:
        runners["previous sandbox"] = lambda j, w: sum(r.passed for r in previous.run_many([x[:2] for x in j], workers=w))
    for runner in runners.values():
        runner(jobs[:2], 1)  # warm the page cache for the interpreter and the standard library

    worker_counts = sorted({1, args.workers})
    seconds: dict[tuple[str, int], list[float]] = {}
    passed: dict[tuple[str, int], int] = {}
    for _ in range(args.repeats):
        for workers in worker_counts:
            for kind, runner in runners.items():
                start = time.perf_counter()
                passed[kind, workers] = runner(jobs, workers)
                seconds.setdefault((kind, workers), []).append(time.perf_counter() - start)

    print(f"{len(jobs)} (program, tests) pairs from {TASKS.name}/, {os.cpu_count()} CPU cores, "
          f"median of {args.repeats}; isolation layers of the judge sandbox:")
    for layer, state in sandbox.isolation_report().items():
        print(f"  {layer:11s} {state}")
    print()
    rows = []
    for workers in worker_counts:
        median = {kind: statistics.median(seconds[kind, workers]) for kind in runners}
        overhead = {kind: (median[kind] - median["bare python"]) * workers / len(jobs) * 1000 for kind in runners}
        for kind in ("bare python", "previous sandbox", "judge sandbox"):
            if kind in runners:
                rows.append({"setup": kind, "workers": workers, "passed": passed[kind, workers],
                             "seconds": median[kind], "overhead_ms": None if kind == "bare python" else overhead[kind]})
    print(table(rows))  # the table the docs quote, from these rows
    failed = [(row["setup"], row["workers"]) for row in rows if row["passed"] != len(jobs)]
    if failed:
        sys.exit(f"not every pair passed in {failed}: the timings above do not measure the same work")
    record("sandbox_throughput", rows, argv, smoke=args.smoke)
    return rows


if __name__ == "__main__":
    main()
