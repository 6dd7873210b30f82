"""What the constitution stage's provenance says, read back without running anything: which must-pass checks
a response fails, whether two codes are one program, the preference pairs a row gives (the revision pair and the
execution-verified pairs), and the summary the stage prints and logs (:func:`summarize`, :func:`format_summary`)."""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Mapping, Sequence

from cai_lightning.constitution import guards
from cai_lightning.constitution.checks import parse_code
from cai_lightning.constitution.principles import Constitution


def failing_must_pass(findings: Mapping[str, list], must_pass: Sequence[str]) -> list[str]:
    """The checks of ``must_pass`` that have findings in ``findings`` (check → findings)."""
    return [check for check in must_pass if findings.get(check)]


def same_program(a: str, b: str) -> bool:
    """Whether two codes differ in formatting only: both parse, to the same syntax tree. ``ast.dump``
    leaves out positions, and parsing drops comments, layout and the choice of quotes; a docstring is a
    statement, so adding one is a real difference. Code that does not parse is the same as nothing."""
    try:
        return ast.dump(parse_code(a)) == ast.dump(parse_code(b))
    except (SyntaxError, ValueError):
        return False


REFUSALS = (*guards.GUARDS, "worse", "deletion", "not_better")
"""Why the gate refused a candidate (see :func:`cai_lightning.constitution.stage.ConstitutionStage`'s gate; ``not_better``: its score is not strictly higher)."""

PAIR_SKIPS = ("unchanged", "chosen_fails_must_pass", "formatting_only")
"""Why a revised row gives no preference pair (see :func:`pair_skip`)."""


def pair_skip(record: dict, must_pass: Sequence[str]) -> str | None:
    """Why a row's provenance gives no preference pair (chosen: its ``final`` response, rejected: its
    ``original``), or None when it gives one. ``unchanged``: no revision was accepted;
    ``chosen_fails_must_pass``: the chosen response still fails a ``must_pass`` check, so preferring it
    would teach a broken or unsafe program; ``formatting_only``: :func:`same_program`, nothing to prefer."""
    if not record["changed"]:
        return "unchanged"
    if failing_must_pass(record["findings_after"], must_pass):
        return "chosen_fails_must_pass"
    if same_program(record["final"], record["original"]):
        return "formatting_only"
    return None


def verified_pairs(record: dict, must_pass: Sequence[str]) -> list[tuple[str, str]]:
    """Execution-verified preference pairs ``(chosen, rejected)`` from a row's provenance: in each step
    whose candidates include one that passes every ``must_pass`` check (the sandbox's verdict on all the
    row's tests, the held-back ones included) and one that fails one, the best passing candidate (highest
    score, the first of equals) against the best failing one (the nearest miss: the hardest negative).
    Steps with an empty candidate on either side, candidates that are :func:`same_program`, and a pair
    already given by an earlier step or by the revision pair (``final``, ``original``) give none. Without
    ``must_pass`` checks there is no verdict to separate candidates by: no pairs; nor for a row whose
    correctness was only parsed (every run of it ended unknown). The chosen side is never a candidate a
    guard refused (a changed behaviour, lost code)."""
    if not must_pass or record.get("correctness_basis") == "parsed":
        return []
    pairs: list[tuple[str, str]] = []
    seen = {(record["final"], record["original"])}
    for step in record["steps"]:
        candidates = [c for c in step["candidates"] if c["text"].strip()]
        passing = [c for c in candidates if not failing_must_pass(c["findings"], must_pass) and c.get("refused") in (None, "not_better")]
        failing = [c for c in candidates if failing_must_pass(c["findings"], must_pass)]
        if not passing or not failing:
            continue
        chosen = max(passing, key=lambda c: c["score"])["text"]  # max keeps the first of equals
        rejected = max(failing, key=lambda c: c["score"])["text"]
        if (chosen, rejected) in seen or same_program(chosen, rejected):
            continue
        seen.add((chosen, rejected))
        pairs.append((chosen, rejected))
    return pairs


def repairs_per_round(provenance: list[dict], must_pass: Sequence[str], rounds: int) -> list[dict]:
    """Per round (1-based): ``failing``, the rows that entered it failing a ``must_pass`` check, and
    ``repaired``, how many of those passed every ``must_pass`` check at its end."""
    table = [{"round": n + 1, "failing": 0, "repaired": 0} for n in range(rounds)]
    for record in provenance:
        findings = record["findings_before"]
        for n, entry in enumerate(table):
            entered_failing = bool(failing_must_pass(findings, must_pass))
            for step in record["steps"]:
                if step["round"] == n and step["accepted"] is not None:
                    findings = step["candidates"][step["accepted"]]["findings"]
            if entered_failing:
                entry["failing"] += 1
                entry["repaired"] += not failing_must_pass(findings, must_pass)
    return table


def summarize(
    provenance: list[dict], constitution: Constitution, must_pass: Sequence[str] = (), rounds: int | None = None
) -> dict:
    """Counts for the printed summary and TensorBoard: rows, proposals and acceptances by source, rows
    violating each checked principle before → after; and, against the ``must_pass`` checks, the rows
    that still fail one, the repairs of each of the ``rounds``, and the preference pairs given and
    skipped by reason (:func:`pair_skip`). ``rounds``: as configured; None: as many as the steps show."""
    if rounds is None:
        rounds = 1 + max((step["round"] for r in provenance for step in r["steps"]), default=-1)
    proposed, accepted = Counter(), Counter()
    for record in provenance:
        for step in record["steps"]:
            proposed.update(c["source"] for c in step["candidates"])
            if step["accepted"] is not None:
                accepted[step["candidates"][step["accepted"]]["source"]] += 1
    violations = {
        p.name: {
            "before": sum(bool(r["findings_before"][p.check]) for r in provenance),
            "after": sum(bool(r["findings_after"][p.check]) for r in provenance),
        }
        for p in constitution.principles
        if p.check
    }
    skips = Counter(pair_skip(r, must_pass) for r in provenance)
    refused = Counter(c.get("refused") for r in provenance for step in r["steps"] for c in step["candidates"])
    refused.pop(None, None)
    return {
        "rows": len(provenance),
        "rows_reviewed": sum(bool(r["steps"]) for r in provenance),
        "rows_changed": sum(r["changed"] for r in provenance),
        "proposed": dict(proposed),
        "accepted": dict(accepted),
        "refused": {reason: refused[reason] for reason in REFUSALS if refused[reason]},
        "correctness_basis": dict(Counter(r.get("correctness_basis", "tests") for r in provenance)),
        "agreed_tests": {
            "rows": sum(bool(r.get("agreed_tests")) for r in provenance),
            "missed": sum(bool(r.get("agreed_tests_missed")) for r in provenance),
        },
        "violations": violations,
        "mean_score_before": round(sum(r["score_before"] for r in provenance) / max(len(provenance), 1), 4),
        "mean_score_after": round(sum(r["score_after"] for r in provenance) / max(len(provenance), 1), 4),
        "must_pass": list(must_pass),
        "rows_failing_must_pass": sum(bool(failing_must_pass(r["findings_after"], must_pass)) for r in provenance),
        "repairs": repairs_per_round(provenance, must_pass, rounds),
        "preference_pairs": skips.pop(None, 0),
        "pairs_skipped": {reason: skips[reason] for reason in PAIR_SKIPS},
        "verified_pairs": sum(len(verified_pairs(r, must_pass)) for r in provenance),
    }


LISTED_ROWS = 20  # rows named in the printed summary; the manifest lists them all


def format_summary(summary: dict) -> str:
    """The summary as printed after the stage (and shown in TensorBoard). The datamodule's entries are
    printed when present: the rows ``on_failure`` dropped or kept, and the checked splits' violations."""
    proposed, accepted = summary["proposed"], summary["accepted"]
    lines = [
        f"  rows: {summary['rows']}, of which {summary['rows_reviewed']} reviewed (the others violate no principle) "
        f"and {summary['rows_changed']} changed",
        "  revisions proposed / accepted: "
        + ", ".join(f"{source} {proposed.get(source, 0)} / {accepted.get(source, 0)}" for source in ("critic", "fixer")),
        "  refused by the gate: " + (", ".join(f"{reason} {n}" for reason, n in summary.get("refused", {}).items()) or "none"),
        "  correctness meant: " + ", ".join(
            f"{label} for {summary.get('correctness_basis', {}).get(basis, 0)} row(s)"
            for basis, label in (("tests", "unit tests run"), ("executed", "the program executed"), ("parsed", "parsed only"))
        ),
        *(
            [f"  generated tests: agreed for {agreed['rows']} row(s), of which {agreed['missed']} missed one"]
            if (agreed := summary.get("agreed_tests", {})).get("rows") else []
        ),
        f"  mean score: {summary['mean_score_before']} -> {summary['mean_score_after']}",
        "  rows violating each principle, before -> after:",
    ]
    lines += [f"    {name:14s} {v['before']:6d} -> {v['after']:6d}" for name, v in summary["violations"].items()]
    if summary["must_pass"]:
        lines.append(
            f"  must pass ({', '.join(summary['must_pass'])}): {summary['rows_failing_must_pass']} row(s) still fail; "
            "per round, failing at its start -> repaired in it: "
            + ", ".join(f"round {r['round']}: {r['failing']} -> {r['repaired']}" for r in summary["repairs"])
        )
    if "failing_rows" in summary:
        failing = summary["failing_rows"]
        verb = f"{'dropped' if summary['on_failure'] == 'drop' else 'kept'} (on_failure: {summary['on_failure']})"
        listed = ", ".join(failing[:LISTED_ROWS]) + (f", ... and {len(failing) - LISTED_ROWS} more" if len(failing) > LISTED_ROWS else "")
        lines.append(f"  {verb}: {len(failing)} row(s) failing a must-pass check" + (f": {listed}" if failing else ""))
    skipped = summary["pairs_skipped"]
    lines.append(
        f"  preference pairs: {summary['preference_pairs']}; skipped: {skipped['unchanged']} unchanged, "
        f"{skipped['formatting_only']} formatting only, {skipped['chosen_fails_must_pass']} chosen fails a must-pass check"
    )
    if "verified_pairs" in summary:  # absent from manifests written before they were counted
        used = summary.get("verified_pairs_used")
        lines.append(
            f"  execution-verified pairs (a candidate passing the must-pass checks, run, against one failing them): "
            f"{summary['verified_pairs']}"
            + ("" if used is None else ", in the preference split" if used else "; data.revise.verified_pairs: true adds them")
        )
    for split, checked in summary.get("checked_splits", {}).items():
        counts = ", ".join(f"{name} {count}" for name, count in checked["violations"].items())
        lines.append(
            f"  {split} (checked, not revised): {checked['rows']} rows; violating: {counts}; "
            f"failing a must-pass check: {checked['rows_failing_must_pass']}"
        )
    return "\n".join(lines)
