"""The task set shipped in the package: schema, size, and a fixed split."""

import ast
import json
from collections import Counter

from cai_lightning.data.records import BUILTIN_DIR, builtin_files, split_of, validate

ROWS = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines()]


def test_schema_and_size():
    assert len(ROWS) >= 400
    assert all(set(r) == {"task_id", "instruction", "input", "output", "entry_point", "tests"} for r in ROWS)
    ids = [r["task_id"] for r in ROWS]
    assert len(set(ids)) == len(ids)
    records, skipped = validate(ROWS, str(BUILTIN_DIR), ROWS[0].keys())
    assert skipped == 0 and len(records) == len(ROWS)


def test_every_reference_defines_its_entry_point_and_every_test_line_is_an_assert():
    for r in ROWS:
        defined = {n.name for n in ast.parse(r["output"]).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert r["entry_point"] in defined, r["task_id"]
        lines = r["tests"].splitlines()
        assert 3 <= len(lines) <= 6 and all(line.startswith("assert") for line in lines), r["task_id"]
        assert len(r["output"].splitlines()) <= 25, r["task_id"]


def test_default_split_is_about_80_10_10_and_mixes_every_category():
    splits = {r["task_id"]: split_of(r, 0.1, 0.1, seed=0) for r in ROWS}
    counts = Counter(splits.values())
    assert 0.7 < counts["train"] / len(ROWS) < 0.9 and counts["val"] >= 25 and counts["test"] >= 25
    categories = {t.split("/")[0] for t in splits}
    for split in ("train", "val", "test"):
        assert {t.split("/")[0] for t, s in splits.items() if s == split} == categories
