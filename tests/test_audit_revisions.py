"""bench/audit_revisions.py: each verdict on a tiny labelled set (a few sandboxed programs), the label check,
and the shape of the shipped measurement set (read, not run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load_audit():
    spec = importlib.util.spec_from_file_location("bench.audit_revisions", BENCH / "audit_revisions.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


audit = _load_audit()


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


ADD_BUGGY = "def add(a, b):\n    print(a + b)\n"
DOUBLE = "def double(x):\n    return 2 * x\n"
LABELS = [
    {"row": 0, "instruction": "Write a function add(a, b) that returns the sum.", "defect": "missing-return",
     "note": "prints instead of returning", "language": "python", "defines": ["add"],
     "checks": [{"call": "add(2, 3)", "expected": "5"}]},
    {"row": 1, "instruction": "Write a function double(x).", "defect": None, "note": "clean", "language": "python",
     "defines": ["double"], "checks": [{"call": "double(4)", "expected": "8"}]},
]
ROWS = [{"instruction": LABELS[0]["instruction"], "input": "", "output": ADD_BUGGY},
        {"instruction": LABELS[1]["instruction"], "input": "", "output": DOUBLE}]


def _revision(row: int, revision: str, principle: str) -> dict:
    return {"instruction": ROWS[row]["instruction"], "input": "", "original": ROWS[row]["output"], "revision": revision,
            "principle": principle, "source": "critic", "guards": {"ignored": True}}


REVISIONS = [
    _revision(0, "def add(a, b):\n    return a + b\n", "fixed"),
    _revision(1, "def twice(x):\n    return 2 * x\n", "renamed"),
    _revision(1, "import math\n\n# nothing left\n", "emptied"),
    _revision(1, 'def double(x):\n    """Twice x."""\n    return 2 * x\n', "docstring"),
    _revision(1, "def double(x):\n    return 3 * x\n", "broken"),
    {**_revision(1, DOUBLE, "unlabelled"), "instruction": "An instruction no label has."},
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, dict]:
    """The audit of REVISIONS (7 sandboxed programs), keyed by principle."""
    folder = tmp_path_factory.mktemp("audit")
    labels = _write(folder / "labels.jsonl", LABELS)
    revisions = _write(folder / "revisions.jsonl", REVISIONS)
    out = folder / "results" / "audit.json"
    assert audit.main([str(revisions), "--labels", str(labels), "--out", str(out), "--workers", "2"]) == 0
    written = json.loads(out.read_text())
    assert written["planted_defects"] == 1 and written["revisions_total"] == len(REVISIONS)
    return {entry["principle"]: entry for entry in written["revisions"]} | {"_totals": written}


def test_fixed_defect_is_better(report):
    entry = report["fixed"]
    assert (entry["row"], entry["defect"], entry["verdict"]) == (0, "missing-return", "better")
    assert entry["checks_original"] == [False] and entry["checks_revision"] == [True]
    assert report["_totals"]["better_defect_rows"] == 1


def test_renamed_function_is_harmful(report):
    assert report["renamed"]["verdict"] == "harmful"
    assert "renames double" in report["renamed"]["reason"]


def test_emptied_program_is_harmful(report):
    assert report["emptied"]["verdict"] == "harmful"
    assert "trivial" in report["emptied"]["reason"]


def test_docstring_only_change_is_unchanged(report):
    assert report["docstring"]["verdict"] == "unchanged"
    assert report["docstring"]["checks_revision"] == [True]


def test_broken_behaviour_is_harmful(report):
    entry = report["broken"]
    assert entry["verdict"] == "harmful" and entry["checks_revision"] == [False]
    assert entry["reason"].startswith("breaks check 0") and "12" in entry["reason"]  # 3 * 4, as the judge saw it


def test_unmatched_instruction_is_unlabelled(report):
    assert report["unlabelled"]["verdict"] == "unlabelled" and report["unlabelled"]["row"] is None
    assert report["_totals"]["totals"] == {"better": 1, "unchanged": 1, "harmful": 3, "unknown": 0, "unlabelled": 1}


# Rules decided from the code alone, with made-up check outcomes: no sandbox.
PASS, FAIL = audit.Outcome(True), audit.Outcome(False, "failed")


def _label(defect=None, defines=(), checks=1) -> dict:
    return {"defect": defect, "defines": list(defines), "checks": [{"call": "f()", "expected": "1"}] * checks}


def test_security_rules():
    shell = "import subprocess\ndef f(h):\n    return subprocess.run('ping ' + h, shell=True)\n"
    safe = "import subprocess\ndef f(h):\n    return subprocess.run(['ping', h])\n"
    label = _label("shell-injection", ["f"])
    assert audit.classify(label, shell, safe, [PASS], [PASS])[0] == "better"
    assert audit.classify(label, shell, safe, [PASS], [FAIL])[0] == "harmful"  # safe but broken
    assert audit.classify(label, shell, shell + "\n# reviewed\n", [PASS], [PASS])[0] == "unchanged"
    verdict, reason = audit.classify(_label(None, ["f"]), safe, "def f(h):\n    return eval(h)\n", [PASS], [PASS])
    assert (verdict, reason) == ("harmful", "adds unsafe-eval")
    assert audit.security_findings(audit.parse('API_KEY = "abc123"\ntoken = ""\n')) == {"hard-coded-secret"}
    assert audit.security_findings(audit.parse('password = input()\nx = ast.literal_eval(s)\n')) == set()


def test_structure_rules():
    assert audit.classify(_label(), "x = 1\n", "x = = 1\n", [PASS], [FAIL]) == ("harmful", "no longer parses as Python")
    assert audit.classify(_label(checks=0), "const x = 1;", "x = 1\n", [], [])[0] == "unknown"  # another language
    assert audit.classify(_label(), "def f(:", "def f(:\n  pass", [FAIL], [FAIL])[0] == "unchanged"  # still broken
    assert audit.classify(_label(), "x = 1", '"""Only a docstring."""\npass\n', [PASS], [FAIL])[0] == "harmful"
    guarded = "import sys\nif sys.version_info >= (3,):\n    def f():\n        return 1\n"
    assert "f" in audit.top_level_names(audit.parse(guarded))
    assert "g" not in audit.top_level_names(audit.parse("def f():\n    g = 1\n"))


def test_stdin_check_runs_the_whole_program_after_future_imports():
    """A stdin check feeds the program its stdin and runs its main guard; the prelude goes after
    ``from __future__`` (else the revision would be a SyntaxError). 2 sandboxed programs."""
    script = ('"""Doubles."""\nfrom __future__ import annotations\n\ndef main():\n    print(2 * int(input()))\n\n\n'
              'if __name__ == "__main__":\n    main()\n')
    checks = [{"stdin": "21\n", "stdout": "42\n"}, {"stdin": "1\n", "stdout": "3\n"}]
    assert audit.run_checks([(script, checks)], workers=2) == [[PASS, audit.Outcome(False, "stdout '2\\n'")]]


def test_check_labels_flags_a_wrong_label(tmp_path, capsys):
    """The originals pass/fail as labelled; a clean label on the buggy row is reported. 4 sandboxed programs."""
    rows, labels = _write(tmp_path / "rows.jsonl", ROWS), _write(tmp_path / "labels.jsonl", LABELS)
    assert audit.main(["--check-labels", "--rows", str(rows), "--labels", str(labels), "--workers", "2"]) == 0
    mislabelled = _write(tmp_path / "wrong.jsonl", [{**LABELS[0], "defect": None}, LABELS[1]])
    assert audit.main(["--check-labels", "--rows", str(rows), "--labels", str(mislabelled), "--workers", "2"]) == 1
    assert "PROBLEM: clean row fails check 0" in capsys.readouterr().out


def test_shipped_measurement_set_shape():
    """The shipped rows and labels line up, in the Hub dataset's schema; nothing is run."""
    rows = [json.loads(line) for line in (BENCH / "data" / "scraped_rows.jsonl").read_text().splitlines()]
    labels = [json.loads(line) for line in (BENCH / "data" / "scraped_labels.jsonl").read_text().splitlines()]
    assert len(rows) == len(labels) >= 60
    assert all(set(row) == {"instruction", "input", "output"} for row in rows)
    assert all(isinstance(row[key], str) for row in rows for key in row)
    assert len({row["instruction"] for row in rows}) == len(rows)
    for i, (row, label) in enumerate(zip(rows, labels)):
        assert set(label) == {"row", "instruction", "defect", "note", "language", "defines", "checks"}
        assert (label["row"], label["instruction"]) == (i, row["instruction"])
        for check in label["checks"]:
            assert set(check) in ({"call", "expected"}, {"setup", "call", "expected"}, {"stdin", "call", "expected"},
                                  {"stdin", "stdout"}, {"setup", "stdin", "stdout"}), (i, check)
        assert label["checks"] or label["defect"] is None, f"row {i}: a planted defect needs checks"
    defects = [label for label in labels if label["defect"] is not None]
    assert len(defects) >= 20 and len(labels) - len(defects) >= 40
    assert sum(label["language"] != "python" for label in labels) >= 2


@pytest.mark.slow
def test_smoke_mode(capsys):
    """The --smoke run test_bench.py makes, here too (10 sandboxed programs)."""
    assert audit.main(["--smoke", "--workers", "2"]) == 0
    assert "unchanged 4" in capsys.readouterr().out
