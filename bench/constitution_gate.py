"""The constitution on realistic untested data: what each critic's revisions do to the rows the gate keeps.

    python bench/constitution_gate.py [--critics random smollm2-135m-instruct qwen2.5-coder-0.5b-instruct]
        [--rows N] [--candidates 2] [--generated-tests 2] [--rounds 1] [--principles sample]
        [--out bench/results/constitution_gate.json]
        [--smoke]

The rows are ``bench/data/scraped_rows.jsonl`` (hand-written in the seed's ``instruction / input / output``
schema, no unit tests, 30 of 81 with a planted defect); each critic revises them with the stage as a user
runs it (``data.revise``: one round, two candidates plus the fixer, two generated-test and solution samples
for the agreed tests, the default constitution), from an empty stage folder. Then ``bench/audit_revisions.py`` (which imports nothing of the constitution) judges
every kept revision against the hand-written labels, through the sandbox: ``better`` (a planted defect
repaired, nothing lost), ``unchanged`` (behaviour kept: a docstring, a style fix), ``harmful`` (a check the
original passed now fails, a name lost, code emptied), ``unknown`` (nothing to run: a missing third-party
module, another language).

Columns: proposed / accepted (critic candidates; the fixer's in brackets), the audit's verdicts on the
kept revisions, ``repaired``: planted defects with a better revision, of all planted, and seconds a row.
``random`` is the floor (the offline default's random critic: noise); a critic that is not installed is
skipped with the command that installs it. ``--smoke`` runs the random critic on 4 rows with a few
tokens, in seconds (CI); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.critic import Critic
from cai_lightning.constitution.stage import ConstitutionStage
from cai_lightning.settings import Revise
from cai_lightning.errors import ConfigError
from harness import record

BENCH = Path(__file__).resolve().parent
ROWS = BENCH / "data" / "scraped_rows.jsonl"
LABELS = BENCH / "data" / "scraped_labels.jsonl"
CRITICS = ("random", "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")


def load_rows(n: int | None) -> list[dict]:
    rows = [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]
    return [{**row, "tests": "", "entry_point": "", "task_id": ""} for row in rows[:n]]


def load_critic(name: str, rows: list[dict]) -> Critic:
    if name == "random":
        from cai_lightning.data.tokenization import train_bpe_tokenizer
        from cai_lightning.prompts import format_prompt

        tokenizer = train_bpe_tokenizer((format_prompt(r["instruction"], r["input"]) + r["output"] for r in rows), 2048)
        return Critic.random(tokenizer, seed=0, device="cpu")
    return Critic.load(name, device="cpu")


def audit(revisions: Path, out: Path) -> dict:
    """``bench/audit_revisions.py`` on the kept revisions, in its own process; its JSON results."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "audit_revisions.py"), str(revisions), "--labels", str(LABELS), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the audit failed:\n{done.stderr[-2000:]}")
    print(done.stdout)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--critics", nargs="+", default=list(CRITICS))
    parser.add_argument("--rows", type=int, default=None, help="the first N rows (default: all)")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--generated-tests", type=int, default=2, help="data.revise.generated_tests (0: off)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--principles", choices=("sample", "all"), default="sample")
    parser.add_argument("--critique-tokens", type=int, default=96)
    parser.add_argument("--revision-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "constitution_gate.json")
    parser.add_argument("--smoke", action="store_true", help="seconds: the random critic, 4 rows, a few tokens (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.critics, args.rows, args.critique_tokens, args.revision_tokens = ["random"], 4, 4, 16
    rows = load_rows(args.rows)
    planted = sum(1 for line in LABELS.read_text().splitlines()[: len(rows)] if json.loads(line)["defect"])
    table = []
    for name in args.critics:
        try:
            critic = load_critic(name, rows)
        except ConfigError as err:
            print(f"{name}: skipped ({err})")
            continue
        settings = Revise(
            rounds=args.rounds, principles=args.principles, candidates=args.candidates, fixers=True,
            generated_tests=args.generated_tests,
            critique_tokens=args.critique_tokens, revision_tokens=args.revision_tokens, device="cpu",
        )
        with tempfile.TemporaryDirectory(prefix="cai-gate-") as folder:
            stage = ConstitutionStage(Constitution.load(DEFAULT_PATH), settings, Path(folder) / "stage", lambda: critic)
            start = time.perf_counter()
            provenance = stage.run(rows, progress=not args.smoke)
            seconds = time.perf_counter() - start
            summary = stage.summarize(provenance)
            revisions = Path(folder) / "stage" / "revisions.jsonl"
            kept = revisions.read_text()
            verdicts = audit(revisions, Path(folder) / "audit.json") if kept.strip() else {"totals": {}, "better_defect_rows": 0}
        totals = verdicts.get("totals", {})
        row = {
            "critic": name, "rows": len(rows), "planted": planted, "seconds_per_row": seconds / len(rows),
            "proposed": summary["proposed"], "accepted": summary["accepted"], "refused": summary["refused"],
            "correctness_basis": summary["correctness_basis"], "agreed_tests": summary["agreed_tests"], "audit": totals,
            "repaired": verdicts.get("better_defect_rows", 0), "audit_entries": verdicts.get("revisions", []),
        }
        table.append(row)
        # after each critic: a long run that is stopped keeps what it measured
        record("constitution_gate", table, argv, smoke=args.smoke, path=None if args.smoke else args.out)
        print_table(table, rows, planted)
    return table


def print_table(table: list[dict], rows: list[dict], planted: int) -> None:
    print(f"{len(rows)} rows ({planted} with a planted defect), {os.cpu_count()} CPU cores")
    header = f"{'critic':30s} {'proposed/accepted':>18s} {'better':>6s} {'same':>5s} {'harmful':>7s} {'unknown':>7s} {'repaired':>9s} {'s/row':>6s}"
    print(header)
    print("-" * len(header))
    for row in table:
        a, p, t = row["accepted"], row["proposed"], row["audit"]
        print(f"{row['critic']:30s} {p.get('critic', 0):>8d}/{a.get('critic', 0):<3d}({a.get('fixer', 0):>3d}) "
              f"{t.get('better', 0):>6d} {t.get('unchanged', 0):>5d} {t.get('harmful', 0):>7d} {t.get('unknown', 0):>7d} "
              f"{row['repaired']:>4d}/{row['planted']:<4d} {row['seconds_per_row']:6.1f}")
        print(f"{'':30s} refused: " + (", ".join(f"{k} {v}" for k, v in row["refused"].items()) or "none"))
        agreed = row.get("agreed_tests", {})
        print(f"{'':30s} agreed generated tests for {agreed.get('rows', 0)} row(s), missed by the original in {agreed.get('missed', 0)}")


if __name__ == "__main__":
    main()
