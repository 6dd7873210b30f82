"""What the stage's provenance says, read back from hand-made records (the stage itself writes them in
test_stage.py): must-pass failures, one program or two, the preference pairs a row gives, repairs per round,
the summary and its printed form."""

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.report import (
    PAIR_SKIPS, failing_must_pass, format_summary, pair_skip, repairs_per_round, same_program, summarize, verified_pairs,
)

MUST_PASS = ("correctness", "safety")
CLEAN = {"correctness": [], "safety": [], "style": [], "documentation": []}
FAILING = {**CLEAN, "correctness": ["assert f(1) == 2 failed"]}
UNSAFE = {**CLEAN, "safety": ["eval() call"]}


def candidate(text: str, findings: dict, score: float, source: str = "critic", refused: str | None = None) -> dict:
    return {"text": text, "findings": findings, "score": score, "source": source, "refused": refused}


def record(original: str, final: str, before: dict, after: dict, steps: list[dict], **extra) -> dict:
    return {"original": original, "final": final, "changed": final != original, "findings_before": before,
            "findings_after": after, "steps": steps, "score_before": 1.0, "score_after": 2.0, **extra}


def test_failing_must_pass_names_the_required_checks_with_findings():
    assert failing_must_pass(FAILING, MUST_PASS) == ["correctness"]
    assert failing_must_pass({**FAILING, **UNSAFE, "correctness": ["x"]}, MUST_PASS) == ["correctness", "safety"]
    assert failing_must_pass({**CLEAN, "style": ["E501"]}, MUST_PASS) == []  # style is not required
    assert failing_must_pass(FAILING, ()) == []


def test_same_program_is_the_same_syntax_tree():
    assert same_program("x = 'a'  # note\n", 'x = "a"\n')
    assert not same_program("x = 1\n", "x = 2\n")
    assert not same_program("def f(:\n", "def f(:\n")  # code that does not parse is never the same program
    assert not same_program("def f():\n    pass\n", 'def f():\n    """Doc."""\n    pass\n')  # a docstring is code


def test_a_row_gives_its_revision_pair_unless_unchanged_broken_or_only_reformatted():
    broken, fixed = "def f(x):\n    return x\n", "def f(x):\n    return x + 1\n"
    assert pair_skip(record(broken, broken, FAILING, FAILING, []), MUST_PASS) == "unchanged"
    assert pair_skip(record(broken, fixed.replace("+ 1", "+ 2"), FAILING, FAILING, []), MUST_PASS) == "chosen_fails_must_pass"
    assert pair_skip(record(fixed, fixed.replace("x + 1", "x+1"), CLEAN, CLEAN, []), MUST_PASS) == "formatting_only"
    assert pair_skip(record(broken, fixed, FAILING, CLEAN, []), MUST_PASS) is None
    assert pair_skip(record(broken, fixed.replace("+ 1", "+ 2"), FAILING, FAILING, []), ()) is None  # nothing required
    assert set(PAIR_SKIPS) == {"unchanged", "chosen_fails_must_pass", "formatting_only"}


def test_verified_pairs_set_the_best_passing_candidate_against_the_nearest_miss():
    broken, fixed = "def f(x):\n    return x\n", "def f(x):\n    return x + 1\n"
    near, far = "def f(x):\n    return x + 2\n", "def f(x):\n    return 0\n"
    other = "def f(x):\n    return 1 + x\n"
    step = {"round": 0, "principle": "correctness", "accepted": None, "candidates": [
        candidate(far, FAILING, 1.0), candidate(near, FAILING, 3.0), candidate(other, CLEAN, 5.0, refused="not_better"),
        candidate("", CLEAN, 9.0), candidate(fixed, CLEAN, 4.0, refused="behaviour"),
    ]}
    row = record(broken, broken, FAILING, FAILING, [step])
    assert verified_pairs(row, MUST_PASS) == [(other, near)]  # a guard's refusal is never chosen; empty text skipped
    assert verified_pairs(row, ()) == []  # without must-pass checks there is no verdict to pair by
    assert verified_pairs({**row, "correctness_basis": "parsed"}, MUST_PASS) == []  # nothing was run
    revised = record(broken, other, FAILING, CLEAN, [step])
    assert verified_pairs(revised, MUST_PASS) == [(other, near)]
    already = record(near, other, FAILING, CLEAN, [step])  # the revision pair gives (other, near) already
    assert verified_pairs(already, MUST_PASS) == []


def test_repairs_per_round_count_rows_entering_failing_and_passing_at_its_end():
    broken, half, fixed = "a = 1\n", "a = 2\n", "a = 3\n"
    two_rounds = record(broken, fixed, FAILING, CLEAN, [
        {"round": 0, "principle": "correctness", "accepted": 0, "candidates": [candidate(half, {**CLEAN, **UNSAFE}, 2.0)]},
        {"round": 1, "principle": "safety", "accepted": 0, "candidates": [candidate(fixed, CLEAN, 3.0)]},
    ])
    never = record(broken, broken, FAILING, FAILING, [
        {"round": 0, "principle": "correctness", "accepted": None, "candidates": [candidate(half, FAILING, 0.5)]},
    ])
    clean = record(fixed, fixed, CLEAN, CLEAN, [])
    assert repairs_per_round([two_rounds, never, clean], MUST_PASS, 2) == [
        {"round": 1, "failing": 2, "repaired": 0},  # the first row left round 1 unsafe: not repaired yet
        {"round": 2, "failing": 2, "repaired": 1},
    ]


def test_the_summary_counts_what_the_rows_say_and_prints_it():
    constitution = Constitution.load(DEFAULT_PATH)
    broken, fixed = "def f(x):\n    return x\n", "def f(x):\n    return x + 1\n"
    repaired = record(broken, fixed, FAILING, CLEAN, [{"round": 0, "principle": "correctness", "accepted": 1, "candidates": [
        candidate(broken, FAILING, 0.0, refused="worse"), candidate(fixed, CLEAN, 2.0),
        candidate(fixed.replace("x + 1", "x+1"), CLEAN, 1.5, source="fixer", refused="not_better"),
    ]}])
    untouched = record(fixed, fixed, CLEAN, CLEAN, [])
    summary = summarize([repaired, untouched], constitution, MUST_PASS)
    assert (summary["rows"], summary["rows_reviewed"], summary["rows_changed"]) == (2, 1, 1)
    assert summary["proposed"] == {"critic": 2, "fixer": 1} and summary["accepted"] == {"critic": 1}
    assert summary["refused"] == {"worse": 1, "not_better": 1}
    assert summary["violations"]["correctness"] == {"before": 1, "after": 0}
    assert summary["rows_failing_must_pass"] == 0 and summary["repairs"] == [{"round": 1, "failing": 1, "repaired": 1}]
    assert summary["preference_pairs"] == 1 and summary["pairs_skipped"]["unchanged"] == 1
    printed = format_summary(summary)
    assert "rows: 2, of which 1 reviewed" in printed and "and 1 changed" in printed
    assert "revisions proposed / accepted: critic 2 / 1, fixer 1 / 0" in printed
    assert "refused by the gate: worse 1, not_better 1" in printed
    assert "round 1: 1 -> 1" in printed and "preference pairs: 1; skipped: 1 unchanged" in printed
