"""Every subcommand under DDP: 2 CPU processes (strategy ddp, gloo) launched for real, as a user would.

DDP starts its other ranks by re-running the command line, so ``main([...])`` in-process cannot test it:
each run is ``python -m cai_lightning`` in a subprocess under ``timeout``, so a collective that waits for a
rank that never comes (the bug this guards against) fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cai_lightning.cli import resolved_config
from conftest import TINY, make_rows, write_jsonl

DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
PREDICT_LIMIT = 5  # odd: the two ranks' shares differ in size


def _config(folder: Path) -> Path:
    """configs/default.yaml (resolved: an overlay of base.yaml) with its ExecutionEval cut to 4 tasks, 2 samples of
    8 tokens each."""
    config = resolved_config(DEFAULT)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ExecutionEval"):
            init = callback["init_args"]
            init.update(limit=4, ks=[1, 2], timeout_s=5.0)
            init["generation"].update(num_return_sequences=2, max_new_tokens=8)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run(workdir: Path, *args: str, timeout_s: int = 150) -> str:
    """``python -m cai_lightning ARGS`` in ``workdir``; its output. Fails on a non-zero exit or a hang."""
    # One thread per process: the single-process run then computes as each DDP rank does (Lightning would
    # give each rank cores / ranks), so their samples can be compared token for token. This checkout first
    # on the path: the code under test, whatever else is installed.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(DEFAULT.parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        ["timeout", "-k", "10", str(timeout_s), sys.executable, "-m", "cai_lightning", *args],
        cwd=workdir, env=env, capture_output=True, text=True,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode} (124: timed out, a rank hung)\n{output[-4000:]}"
    return output


def _newest(runs: Path, name: str) -> Path:
    """The most recently written ``name`` in the run folders (a command may write beside its checkpoint
    or into a folder of its own)."""
    return max(runs.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime_ns)


def _samples(path: Path) -> list[dict]:
    """The samples of an ``execution_tasks.jsonl``, without their (wall-clock) durations."""
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in s.items() if k != "duration_s"} for s in samples]


def _table(output: str) -> str:
    """The metrics table ExecutionEval printed (pass@k, syntax_valid, ..., error counts)."""
    return output.split("Execution-based evaluation on tasks")[1].split("Samples:")[0]


@pytest.mark.slow
def test_fit_validate_test_predict_on_two_processes(tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", make_rows(60))
    common = [
        "--config", str(_config(tmp_path)), *TINY, "--data.source=rows.jsonl", "--data.cache_dir=cache",
        "--data.constitution=null",  # the stage's own DDP path is tested with the stage
        "--data.batch_size=2",  # several batches per rank
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
    ]
    runs = tmp_path / "lightning_logs" / "default"

    def run(*args: str) -> str:
        """A command, which adds at most one run folder (never one per rank)."""
        before = set(runs.iterdir()) if runs.exists() else set()
        output = _run(tmp_path, *args)
        assert len(set(runs.iterdir()) - before) <= 1, sorted(p.name for p in runs.iterdir())
        return output

    # fit: one run folder, its checkpoint, samples from rank 0, the export (it used to crash at the end)
    run("fit", *common, *DDP)
    [fit] = list(runs.iterdir())
    assert (fit / "checkpoints" / "last.ckpt").exists()
    assert (fit / "hf_model" / "config.json").exists() and (fit / "hf_model" / "tokenizer_config.json").exists()

    run("validate", *common, *DDP, "--ckpt_path=last")

    # test: the tasks split across ranks, one report, the same as one process draws with the same seeds
    out_ddp = run("test", *common, *DDP, "--ckpt_path=last")
    assert out_ddp.count("Execution-based evaluation on tasks (4 tasks)") == 1  # rank 0 alone reports
    ddp = _samples(_newest(runs, "execution_tasks.jsonl"))
    out_single = run("test", *common, "--trainer.devices=1", "--ckpt_path=last")
    single = _samples(_newest(runs, "execution_tasks.jsonl"))
    assert "pass@2" in _table(out_ddp) and _table(out_ddp) == _table(out_single)
    assert len(ddp) == 4 * 2 and [(s["task_id"], s["sample"]) for s in ddp] == [(s["task_id"], s["sample"]) for s in single]
    assert ddp == single  # completions, verdicts, syntax and safety: sample for sample

    # predict: one JSONL, in the order of the predict split
    run("predict", *common, *DDP, "--ckpt_path=last", f"--data.predict_limit={PREDICT_LIMIT}")
    [predictions] = list(runs.glob("*/predictions*.jsonl"))
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    import datasets

    [cached] = list((tmp_path / "cache").glob("*/dataset"))
    expected = datasets.load_from_disk(str(cached))["test"]["prompt"][:PREDICT_LIMIT]
    assert [item["prompt"] for item in lines] == expected
    assert all(len(item["completions"]) == 2 for item in lines)


@pytest.mark.slow
def test_the_constitution_stage_is_shared_out_across_ranks_and_builds_what_one_process_builds(tmp_path):
    rows = make_rows(24)
    common = [
        "--config", str(_config(tmp_path)), *TINY, "--data.source=../rows.jsonl", "--data.cache_dir=cache",
        "--data.revise.batch_size=2",  # 10 chunks of 2 training rows
        "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
    ]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    shared.mkdir(), alone.mkdir()
    output = _run(shared, "fit", *common, *DDP)
    revised = [int(n) for n in re.findall(r"Constitution stage: rank \d revised (\d+) chunk", output)]
    [stage] = list((shared / "cache/constitution").iterdir())
    chunks = len(list(stage.glob("chunk-*.json")))
    assert len(revised) == 2 and sum(revised) == chunks == 10 and min(revised) >= 1, output[-3000:]  # each once
    _run(alone, "fit", *common, "--trainer.devices=1")
    import datasets

    def built(folder: Path) -> dict:
        [dataset] = list((folder / "cache").glob("*/dataset"))
        loaded = datasets.load_from_disk(str(dataset))
        return {name: loaded[name]["output"] for name in ("train", "val")} | {"pairs": loaded["preference"]["chosen"]}

    assert built(shared) == built(alone)
