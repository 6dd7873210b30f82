import json

import pytest

from cai_lightning.data.records import load_source, split_of, validate
from cai_lightning.errors import DataError
from conftest import make_rows, write_jsonl


def _load_and_validate(path, on_bad_rows="error"):
    loaded = load_source(str(path))
    return validate(loaded.rows, loaded.origin, loaded.rows.column_names, on_bad_rows)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"output": ""}, "row 3: field 'output' is empty"),
        ({"instruction": 7}, "row 3: field 'instruction' must be a string, got int"),
        ({"instruction": None}, "row 3: field 'instruction' must be a string, got NoneType"),
        ({"input": ["a"]}, "row 3: field 'input' must be a string, got list"),
    ],
)
def test_bad_row_error_names_file_row_and_field(tmp_path, bad, expected):
    rows = make_rows(5)
    rows[2].update(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=f"{path}: {expected}".replace("[", r"\[").replace("(", r"\(")):
        _load_and_validate(path)


def test_bad_rows_skipped_and_counted(tmp_path):
    rows = make_rows(6)
    rows[1]["output"] = "   "
    rows[4]["instruction"] = 3
    records, skipped = _load_and_validate(write_jsonl(tmp_path / "r.jsonl", rows), on_bad_rows="skip")
    assert skipped == 2
    assert [r["instruction"] for r in records] == [rows[i]["instruction"] for i in (0, 2, 3, 5)]


def test_missing_column_and_no_usable_rows(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"instruction": "x", "answer": "y"}])
    with pytest.raises(DataError, match="no column 'output'"):
        _load_and_validate(path)
    path = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "x", "output": ""}])
    with pytest.raises(DataError, match="no usable rows"):
        _load_and_validate(path, on_bad_rows="skip")


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.jsonl", None, "file not found"),
        ("rows.txt", "hello", "unknown format '.txt'"),
        ("empty.jsonl", "", "is empty"),
        ("broken.json", "{not json", "could not read"),
    ],
)
def test_unreadable_sources(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=expected):
        load_source(str(path))


def test_csv_and_parquet_load_like_jsonl(tmp_path):
    import pandas as pd

    rows = make_rows(4)
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")
    for name in ("r.csv", "r.parquet"):
        records, _ = _load_and_validate(tmp_path / name)
        assert [r["output"] for r in records] == [r["output"] for r in rows]
        assert records[1]["input"] == ""  # an empty CSV cell is read as null, then as ""


def test_hub_layout_folder_takes_the_load_dataset_path(tmp_path):
    """A folder laid out like the Hub repo of python_code_instructions_18k_alpaca, in its exact schema
    (instruction, input, output, prompt), is read by the same ``load_dataset(source, split=...)`` call
    as the Hub id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "python_code_instructions_18k_alpaca"
    (repo / "data").mkdir(parents=True)
    rows = make_rows(5)
    table = pa.table({k: pa.array([r[k] for r in rows], pa.string()) for k in ("instruction", "input", "output", "prompt")})
    pq.write_table(table, repo / "data" / "train-00000-of-00001-8b6e212f3e1ece96.parquet")
    loaded = load_source(str(repo), split="train")
    assert loaded.fingerprint.startswith("hub:")
    assert loaded.rows.column_names == ["instruction", "input", "output", "prompt"]
    records, _ = validate(loaded.rows, loaded.origin, loaded.rows.column_names)
    assert records[2]["output"] == rows[2]["output"]


def test_split_is_a_stable_function_of_the_task():
    records = [{"instruction": f"task {i}", "input": ""} for i in range(2000)]
    splits = [split_of(r, 0.1, 0.1, seed=0) for r in records]
    assert abs(splits.count("test") / 2000 - 0.1) < 0.03 and abs(splits.count("val") / 2000 - 0.1) < 0.03
    # row order and other rows do not matter; the seed does
    assert [split_of(r, 0.1, 0.1, seed=0) for r in reversed(records)] == splits[::-1]
    assert [split_of(r, 0.1, 0.1, seed=1) for r in records] != splits
    # a task_id, when present, is the key
    assert split_of({"task_id": "a", "instruction": "x"}, 0.5, 0.0, 0) == split_of({"task_id": "a", "instruction": "y"}, 0.5, 0.0, 0)
