"""Sandbox throughput: the same (program, tests) pairs run bare and in the sandbox, side by side in one run.

    python bench/sandbox_throughput.py [--programs 64] [--workers N]

The pairs are the reference solutions and tests of the task set shipped in the package, cycled to
``--programs``. Every row must pass all of them, or the timing would be of something else.

Rows:
  bare python, 1 / N workers   one `python -I -S -c "<program>\\n<tests>"` subprocess per pair, no
                               isolation (same interpreter flags as the sandbox, so only the sandbox differs)
  sandbox, 1 / N workers       `sandbox.run_many` with default Limits

Columns: ``vs 1 worker`` is programs/s over the same kind's 1-worker row. ``overhead`` is what the
sandbox adds per program over bare python at the same number of workers, in worker-milliseconds:
(sandbox seconds - bare seconds) x workers / programs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cai_lightning import sandbox

TASKS = Path(sandbox.__file__).parent / "tasks"


def load_jobs(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for path in sorted(TASKS.glob("*.jsonl")) for line in path.read_text().splitlines() if line.strip()]
    pairs = [(r["output"], r["tests"]) for r in rows if r.get("tests")]
    return [pairs[i % len(pairs)] for i in range(n)]


def bare(jobs: list[tuple[str, str]], workers: int) -> tuple[float, int]:
    def one(job: tuple[str, str]) -> bool:
        program, tests = job
        done = subprocess.run([sys.executable, "-I", "-S", "-c", f"{program}\n{tests}\n"], capture_output=True)
        return done.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(pool.map(one, jobs))
    return time.perf_counter() - start, passed


def sandboxed(jobs: list[tuple[str, str]], workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = sandbox.run_many(jobs, workers=workers)
    return time.perf_counter() - start, sum(r.passed for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=64, help="pairs to run per row")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of the parallel rows")
    args = parser.parse_args(argv)
    jobs = load_jobs(args.programs)
    sandboxed(jobs[:2], 1)  # warm the page cache for the interpreter and the standard library

    rows = []
    for kind, runner in (("bare python", bare), ("sandbox", sandboxed)):
        for workers in (1, args.workers):
            seconds, passed = runner(jobs, workers)
            rows.append((kind, workers, seconds, passed))

    bare_seconds = {workers: seconds for kind, workers, seconds, _ in rows if kind == "bare python"}
    one_worker = {kind: seconds for kind, workers, seconds, _ in rows if workers == 1}
    print(f"{len(jobs)} (program, tests) pairs from {TASKS.name}/, {os.cpu_count()} CPU cores; isolation layers:")
    for layer, state in sandbox.isolation_report().items():
        print(f"  {layer:11s} {state}")
    print()
    header = (
        f"{'setup':<22s} {'programs':>8s} {'passed':>6s} {'seconds':>8s} {'programs/s':>10s} {'vs 1 worker':>11s} "
        f"{'overhead (ms)':>13s}"
    )
    print(header)
    print("-" * len(header))
    for kind, workers, seconds, passed in rows:
        overhead = "" if kind == "bare python" else f"{(seconds - bare_seconds[workers]) * workers / len(jobs) * 1000:+.1f}"
        print(
            f"{f'{kind}, {workers} worker' + ('s' if workers > 1 else ''):<22s} {len(jobs):>8d} {passed:>6d} {seconds:>8.2f} "
            f"{len(jobs) / seconds:>10.1f} {one_worker[kind] / seconds:>10.2f}x {overhead:>13s}"
        )
    failed = [(kind, workers) for kind, workers, _, passed in rows if passed != len(jobs)]
    if failed:
        sys.exit(f"not every pair passed in {failed}: the timings above do not measure the same work")


if __name__ == "__main__":
    main()
