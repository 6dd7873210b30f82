"""Audit the constitution stage's accepted revisions against hand-labelled behaviour checks: did a revision
make a row better, leave its behaviour alone, or break it?

    python bench/audit_revisions.py REVISIONS.jsonl [--labels bench/data/scraped_labels.jsonl] [--out bench/results/audit.json]
    python bench/audit_revisions.py --check-labels [--rows bench/data/scraped_rows.jsonl] [--labels ...]
    python bench/audit_revisions.py --smoke

``REVISIONS.jsonl`` is what the constitution stage writes, one object per accepted revision with at least
``instruction``, ``input``, ``original``, ``revision``, ``principle``, ``source`` ("critic" or "fixer") and
``guards`` (ignored here). Each is matched to its label by the exact ``instruction`` text. The labels
(``bench/data/scraped_labels.jsonl``, one per row of ``scraped_rows.jsonl``) give the planted ``defect`` kind
(null for a clean row), the names the instruction asks for (``defines``) and ``checks`` a correct answer
passes:

  {"call": "f(5)", "expected": "120", "setup"?: ..., "stdin"?: ...}   repr(f(5)) must equal expected; the
                                   program's own top level runs first (``__name__`` is not "__main__")
  {"stdin": "3\\n4\\n", "stdout": "7\\n", "setup"?: ...}               run the whole program (``__name__`` set
                                   to "__main__", so a main guard runs) on that stdin; stdout must match

``setup`` is Python run before the code (the data a row's ``input`` field defines); it and the stdin and
``__name__`` lines go after the code's docstring and ``from __future__`` imports, which must come first. Every program, original
or revision, runs only through ``cai_lightning.sandbox``; this process parses code, never executes it.

Verdicts, one per revision, decided in this order:
  unlabelled  no label has the revision's instruction
  harmful     the revision is empty or trivial (only imports, docstrings, ``pass``); or it no longer parses
              although the original did; or it drops or renames a name in ``defines``; or it adds a security
              finding (below) the original did not have; or it fails a check the original passes
  unknown     the label has no checks (a third-party module the sandbox lacks, another language)
  better      it passes every check the original passed plus at least one the original failed, or removes a
              security finding of the original while passing every check the original passed
  unchanged   the same checks pass (e.g. a docstring added, the defect still there)

Security findings are a small AST test: a call of ``eval``/``exec``, a ``shell=True`` keyword, or a non-empty
string literal assigned to a name like password/secret/token/api_key.

The table shows one line per revision; the totals end with ``better / planted defects``: the labelled
defect rows with at least one better revision, over all labelled defect rows.

``--check-labels`` checks the labels themselves: every clean row's original passes all its checks, every
defect row's original fails at least one (a security defect row instead passes them all and has the
finding). Exits 1 if any row does not. ``--smoke`` (seconds, for CI) checks the labels of the first
rows and audits those rows' originals as revisions of themselves, writing nothing; it fails unless every
label holds and every verdict is unchanged or unknown.

Why one long module: it is the audit's whole judge (label checks, the verdict rules, the sandbox runs and the
report), kept apart from the package on purpose, importing nothing of the constitution it judges.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cai_lightning import sandbox

DATA = Path(__file__).resolve().parent / "data"
LIMITS = sandbox.Limits(timeout_s=10)
SECURITY_KINDS = ("unsafe-eval", "shell-injection", "hard-coded-secret")
SECRET_NAME = re.compile(r"password|passwd|secret|token|api_?key", re.IGNORECASE)
VERDICTS = ("better", "unchanged", "harmful", "unknown", "unlabelled")
SMOKE_ROWS = 4  # 10 sandboxed programs


@dataclass(frozen=True)
class Outcome:
    """How one program did on one check: passed, and a short detail when it did not."""

    passed: bool
    detail: str = ""


# ----------------------------------------------------------------------------------------------------
# Reading the files.


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file; exits with the file and line of the first bad one."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        sys.exit(f"{path}: cannot read: {error}")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            sys.exit(f"{path}:{number}: not JSON: {error}")
        if not isinstance(record, dict):
            sys.exit(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def labels_by_instruction(labels: list[dict], path: Path) -> dict[str, dict]:
    """The labels keyed by instruction; exits if two share one (a revision could not be matched)."""
    by_instruction: dict[str, dict] = {}
    for label in labels:
        if label["instruction"] in by_instruction:
            sys.exit(f"{path}: rows {by_instruction[label['instruction']]['row']} and {label['row']} have the same "
                     f"instruction; revisions are matched by instruction, so it must be unique")
        by_instruction[label["instruction"]] = label
    return by_instruction


# ----------------------------------------------------------------------------------------------------
# Reading code without running it.


def parse(code: str) -> ast.Module | None:
    """The module's AST, or None when it is not Python."""
    with sandbox.quiet_syntax_warnings():
        try:
            return ast.parse(code)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None


def top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at its top level, also inside top-level ``if``/``try``/``with`` blocks."""
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                continue  # what a body binds is not top level
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            for block in (getattr(node, "body", []), getattr(node, "orelse", []), getattr(node, "finalbody", []),
                          *(handler.body for handler in getattr(node, "handlers", []))):
                visit(block)

    visit(tree.body)
    return names


def is_trivial(tree: ast.Module) -> bool:
    """Nothing but imports, docstrings (bare string expressions) and ``pass``; comments are gone already."""
    def inert(node: ast.stmt) -> bool:
        return isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))

    return all(inert(node) for node in tree.body)


def security_findings(tree: ast.Module | None) -> set[str]:
    """The security defect kinds a simple AST test finds (see the module docstring)."""
    found: set[str] = set()
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                found.add("unsafe-eval")
            if any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords):
                found.add("shell-injection")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Constant):
            if not (isinstance(node.value.value, str) and node.value.value):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id if isinstance(t, ast.Name) else t.attr for t in targets if isinstance(t, (ast.Name, ast.Attribute))]
            if any(SECRET_NAME.search(name) for name in names):
                found.add("hard-coded-secret")
    return found


# ----------------------------------------------------------------------------------------------------
# Running checks, in the sandbox only.


def with_prelude(code: str, prelude: str) -> str:
    """``code`` with ``prelude`` inserted after its docstring and ``from __future__`` imports (which must
    stay first), or in front when there are none or it does not parse."""
    tree = parse(code)
    after = 0
    for node in tree.body if tree is not None else ():
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        docstring = after == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not (future or docstring):
            break
        after = node.end_lineno
    lines = code.splitlines(keepends=True)
    head = "".join(lines[:after])
    return head + ("\n" if head and not head.endswith("\n") else "") + prelude + "".join(lines[after:])


def check_job(code: str, check: dict) -> tuple[str, str]:
    """The sandbox (program, tests) pair that runs ``code`` on one check."""
    prelude = ""
    if "stdin" in check:  # the sandbox's own stdin is empty
        prelude += f"import io, sys\nsys.stdin = io.StringIO({check['stdin']!r})\n"
    if "stdout" in check:  # the whole program, as `python program.py` would run it
        prelude += "__name__ = '__main__'\n"
    if check.get("setup"):
        prelude += check["setup"] + "\n"
    if "call" in check:
        tests = f"__value = {check['call']}\nassert repr(__value) == {check['expected']!r}, repr(__value)\n"
    else:
        tests = ""
    return with_prelude(code, prelude), tests


def check_outcome(check: dict, result: sandbox.Result) -> Outcome:
    """Whether a sandbox result passes its check: the tests passed and, for a stdout check, the output matches."""
    if result.status != "passed":
        detail = result.status if result.error_type is None else f"{result.status} {result.error_type}"
        return Outcome(False, f"{detail}: {result.message}".strip(": ")[:160])
    if "stdout" in check and result.stdout != check["stdout"]:
        return Outcome(False, f"stdout {result.stdout[:80]!r}")
    return Outcome(True)


def run_checks(programs: list[tuple[str, list[dict]]], workers: int) -> list[list[Outcome]]:
    """For each (code, checks), the outcome of each check. Identical jobs (the same original revised under
    several principles) run once."""
    jobs = {check_job(code, check): None for code, checks in programs for check in checks}
    results = dict(zip(jobs, sandbox.run_many(list(jobs), limits=LIMITS, workers=workers)))
    return [[check_outcome(check, results[check_job(code, check)]) for check in checks] for code, checks in programs]


def describe(check: dict) -> str:
    """A check in a few words, for the table."""
    if "call" in check:
        return f"{check['call'][:40]} == {check['expected'][:20]}"
    return f"stdout on stdin {check.get('stdin', '')[:20]!r}"


# ----------------------------------------------------------------------------------------------------
# The verdict.


def classify(label: dict, original: str, revision: str,
             before: list[Outcome], after: list[Outcome]) -> tuple[str, str]:
    """(verdict, short reason) for one revision of a labelled row, given each check's outcome on the
    original (``before``) and on the revision (``after``). Pure: the rules of the module docstring."""
    original_tree, revision_tree = parse(original), parse(revision)
    if not revision.strip() or (revision_tree is not None and is_trivial(revision_tree)):
        return "harmful", "empty or trivial: only imports, docstrings or pass"
    if original_tree is not None and revision_tree is None:
        return "harmful", "no longer parses as Python"
    if revision_tree is not None:
        missing = [name for name in label["defines"] if name not in top_level_names(revision_tree)]
        if missing:
            return "harmful", f"drops or renames {', '.join(missing)}"
    found_before, found_after = security_findings(original_tree), security_findings(revision_tree)
    if found_after - found_before:
        return "harmful", f"adds {', '.join(sorted(found_after - found_before))}"
    checks = label["checks"]
    if not checks:
        return "unknown", "no behaviour checks for this row"
    broken = [i for i in range(len(checks)) if before[i].passed and not after[i].passed]
    if broken:
        i = broken[0]
        return "harmful", f"breaks check {i} ({describe(checks[i])}): {after[i].detail}"
    fixed = [i for i in range(len(checks)) if not before[i].passed and after[i].passed]
    removed = found_before - found_after
    if fixed or removed:
        parts = [f"passes check{'s' if len(fixed) > 1 else ''} {', '.join(map(str, fixed))} now"] if fixed else []
        parts += [f"removes {', '.join(sorted(removed))}"] if removed else []
        return "better", "; ".join(parts)
    passed = sum(o.passed for o in after)
    return "unchanged", f"same checks pass ({passed}/{len(checks)})"


def audit(revisions: list[dict], labels: dict[str, dict], workers: int) -> list[dict]:
    """One entry per revision: its row, defect, principle, source, verdict and reason, and the check outcomes."""
    labelled = [(r, labels[r["instruction"]]) for r in revisions if r["instruction"] in labels]
    programs = [(r[key], label["checks"]) for r, label in labelled for key in ("original", "revision")]
    outcomes = iter(run_checks(programs, workers))
    entries = []
    for record in revisions:
        label = labels.get(record["instruction"])
        entry = {"row": None, "defect": None, "principle": record["principle"], "source": record["source"],
                 "instruction": record["instruction"]}
        if label is None:
            entries.append({**entry, "verdict": "unlabelled", "reason": "no label has this instruction"})
            continue
        before, after = next(outcomes), next(outcomes)
        verdict, reason = classify(label, record["original"], record["revision"], before, after)
        entries.append({**entry, "row": label["row"], "defect": label["defect"], "verdict": verdict, "reason": reason,
                        "checks_original": [o.passed for o in before], "checks_revision": [o.passed for o in after]})
    return entries


# ----------------------------------------------------------------------------------------------------
# Checking the labels themselves.


def check_labels(rows: list[dict], labels: list[dict], workers: int) -> list[dict]:
    """One entry per row: the original's check results and the problem with its label ("" when none)."""
    if len(rows) != len(labels):
        sys.exit(f"{len(rows)} rows but {len(labels)} labels: there must be one label per row, in order")
    outcomes = run_checks([(row["output"], label["checks"]) for row, label in zip(rows, labels)], workers)
    entries = []
    for i, (row, label, results) in enumerate(zip(rows, labels, outcomes)):
        tree = parse(row["output"])
        found = security_findings(tree)
        defect = label["defect"]
        failed = [j for j, o in enumerate(results) if not o.passed]
        problem = ""
        if label["row"] != i or label["instruction"] != row["instruction"]:
            problem = f"label {label['row']} does not match row {i} (row number or instruction differs)"
        elif tree is not None and (missing := [n for n in label["defines"] if n not in top_level_names(tree)]):
            problem = f"defines {', '.join(missing)} but the original has no such name"
        elif defect is None and failed:
            problem = f"clean row fails check {failed[0]} ({describe(label['checks'][failed[0]])}): {results[failed[0]].detail}"
        elif defect is None and found:
            problem = f"clean row has a security finding: {', '.join(sorted(found))}"
        elif defect in SECURITY_KINDS and defect not in found:
            problem = f"labelled {defect} but the AST test does not find it"
        elif defect in SECURITY_KINDS and (failed or not results):
            problem = "a security defect row needs checks the original passes (the behaviour to keep)"
        elif defect is not None and defect not in SECURITY_KINDS and not failed:
            problem = f"labelled {defect} but the original passes all {len(results)} checks"
        entries.append({"row": i, "defect": defect, "language": label["language"], "checks": len(results),
                        "passed": len(results) - len(failed), "problem": problem,
                        "detail": results[failed[0]].detail if failed else ""})
    return entries


# ----------------------------------------------------------------------------------------------------
# The command line.


def print_audit(entries: list[dict], planted: int) -> dict:
    header = f"{'row':>4s}  {'defect':<18s} {'principle':<20s} {'source':<6s} {'verdict':<10s} reason"
    print(header)
    print("-" * len(header))
    for e in entries:
        row = "-" if e["row"] is None else str(e["row"])
        print(f"{row:>4s}  {e['defect'] or '':<18s} {e['principle'][:20]:<20s} {e['source'][:6]:<6s} "
              f"{e['verdict']:<10s} {e['reason']}")
    totals = Counter(e["verdict"] for e in entries)
    better_rows = len({e["row"] for e in entries if e["verdict"] == "better" and e["defect"] is not None})
    print()
    print("  ".join(f"{verdict} {totals[verdict]}" for verdict in VERDICTS) + f"  (of {len(entries)} revisions)")
    print(f"better / planted defects: {better_rows} / {planted}" + (f" ({better_rows / planted:.0%})" if planted else ""))
    return {"totals": {verdict: totals[verdict] for verdict in VERDICTS}, "revisions_total": len(entries),
            "better_defect_rows": better_rows, "planted_defects": planted}


def print_check_labels(entries: list[dict]) -> None:
    header = f"{'row':>4s}  {'defect':<18s} {'language':<10s} {'passed':>6s}  result"
    print(header)
    print("-" * len(header))
    for e in entries:
        shown = "n/a" if not e["checks"] else f"{e['passed']}/{e['checks']}"
        if e["problem"]:
            result = f"PROBLEM: {e['problem']}"
        elif e["defect"] in SECURITY_KINDS:
            result = f"ok, the AST test finds {e['defect']}"
        else:
            result = "ok" if e["defect"] is None else f"ok, fails: {e['detail']}"[:90]
        print(f"{e['row']:>4d}  {e['defect'] or '':<18s} {e['language']:<10s} {shown:>6s}  {result}")
    defects = Counter(e["defect"] for e in entries if e["defect"] is not None)
    problems = sum(bool(e["problem"]) for e in entries)
    print()
    print(f"{len(entries)} rows: {len(entries) - sum(defects.values())} clean, {sum(defects.values())} with a planted "
          f"defect ({', '.join(f'{k} {n}' for k, n in sorted(defects.items()))}); "
          f"{sum(not e['checks'] for e in entries)} without checks; {problems} problem(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="?", type=Path, help="the constitution stage's accepted revisions (JSON lines)")
    parser.add_argument("--labels", type=Path, default=DATA / "scraped_labels.jsonl", help="one label per row")
    parser.add_argument("--rows", type=Path, default=DATA / "scraped_rows.jsonl", help="the rows (--check-labels)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/audit.json"), help="where the JSON report goes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sandboxed programs at once")
    parser.add_argument("--check-labels", action="store_true", help="run every row's original against its checks")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check of the whole machinery (CI)")
    args = parser.parse_args(argv)
    labels = read_jsonl(args.labels)

    if args.smoke:
        rows, labels = read_jsonl(args.rows)[:SMOKE_ROWS], labels[:SMOKE_ROWS]
        checked = check_labels(rows, labels, args.workers)
        print_check_labels(checked)
        print()
        themselves = [{"instruction": r["instruction"], "input": r["input"], "original": r["output"],
                       "revision": r["output"], "principle": "identity", "source": "critic"} for r in rows]
        entries = audit(themselves, labels_by_instruction(labels, args.labels), args.workers)
        print_audit(entries, planted=sum(label["defect"] is not None for label in labels))
        wrong = [e["row"] for e in entries if e["verdict"] not in ("unchanged", "unknown")]
        if any(e["problem"] for e in checked) or wrong:
            sys.exit(f"smoke: label problems or a row that is not unchanged as its own revision (rows {wrong})")
        return 0

    if args.check_labels:
        entries = check_labels(read_jsonl(args.rows), labels, args.workers)
        print_check_labels(entries)
        return 1 if any(e["problem"] for e in entries) else 0

    if args.revisions is None:
        parser.error("give REVISIONS.jsonl, or --check-labels")
    revisions = read_jsonl(args.revisions)
    for number, record in enumerate(revisions, 1):
        missing = [k for k in ("instruction", "original", "revision", "principle", "source") if not isinstance(record.get(k), str)]
        if missing:
            sys.exit(f"{args.revisions}: revision {number} lacks the string field(s) {', '.join(missing)}")
    entries = audit(revisions, labels_by_instruction(labels, args.labels), args.workers)
    summary = print_audit(entries, planted=sum(label["defect"] is not None for label in labels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "revisions_file": str(args.revisions), "labels": str(args.labels),
                                    "revisions": entries}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
