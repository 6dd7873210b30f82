"""The benchmarks' smoke modes, so that none can rot: each runs its whole machinery in seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_constitution_effect_smoke_runs_every_arm_and_resumes(workdir, capsys):
    bench = _load("constitution_effect")
    out = workdir / "effect"
    args = ["--smoke", "--out", str(out), "--cache-dir", str(workdir / "cache")]
    results = bench.main(args)
    assert list(results) == list(bench.ARMS)
    corrupted = json.loads((out / "corruption.json").read_text())
    assert corrupted and {entry["kind"] for entry in corrupted} <= set(bench_kinds())
    clean = (out / "clean.jsonl").read_text().splitlines()
    assert len(clean) == len((out / "corrupted.jsonl").read_text().splitlines()) == 440
    for arm, result in results.items():
        samples = result["suites"]["tasks"]["samples"]
        assert len(samples) == 4 * 2  # --smoke: 4 tasks, 2 samples each
        assert ("fit_seconds" in result) == (arm != "base")
    assert "by_kind" in results["sft-constitution"]["stage"]
    table = (out / "table.md").read_text()
    for arm in bench.ARMS:
        assert f"| {arm} |" in table
    assert "pass@1 - sft-corrupted" in table and "pass@1 - sft-constitution" in table
    dpo = yaml.safe_load((out / "sft-constitution-dpo" / "config.yaml").read_text())
    assert dpo["model"]["class_path"].endswith("PreferenceLM") and "sft-constitution" in dpo["model"]["init_args"]["pretrained"]
    assert results["sft-constitution-dpo"]["optimizer_steps"] == 2

    capsys.readouterr()
    bench.main(args)  # every arm is read back, none re-run
    assert capsys.readouterr().out.count("done before") == len(bench.ARMS)


def bench_kinds():
    from cai_lightning.data.corruption import KINDS

    return KINDS


def test_sandbox_throughput_smoke_compares_every_row_on_passing_pairs(capsys):
    rows = _load("sandbox_throughput").main(["--smoke", "--workers", "2"])
    setups = {row["setup"] for row in rows}
    assert {"bare python", "judge sandbox"} <= setups  # the previous sandbox too where git history is there
    assert all(row["passed"] == 4 for row in rows)
    assert "overhead (ms)" in capsys.readouterr().out


def test_dpo_step_smoke_compares_cached_and_live_references(capsys):
    rows = _load("dpo_step").main(["--smoke"])
    assert [row["mode"] for row in rows] == ["cached", "live"]
    assert rows[0]["reference_s"] > 0 == rows[1]["reference_s"]
    assert all(row["pairs_per_s"] > 0 and row["peak_mib"] > 0 for row in rows)
    assert "cached vs live" in capsys.readouterr().out
