"""The benchmarks' smoke modes, so that none can rot: each runs its whole machinery in seconds.

One test per script in ``bench/``, found by listing the folder: every script must take ``main(argv)`` with a
``--smoke`` flag, so a new benchmark without one fails here. Scripts with a check below also have their
results looked at; the rest must at least run to the end.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cai_lightning.cli import resolved_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
NOT_BENCHES = {"report"}  # draws the docs' tables and plots from the result files: tests/test_bench_report.py
SCRIPTS = sorted(path.stem for path in BENCH.glob("*.py")
                 if 'if __name__ == "__main__":' in path.read_text() and path.stem not in NOT_BENCHES)
SLOW = {  # a minute (constitution_effect: five arms, each fine-tuned and sampled) or 4-20 s: training, subprocesses
    "constitution_effect", "dpo_step", "memory_growth", "optimizer_step", "recipe_compare", "train_throughput",
}
# Benches that keep a folder of their own (one file per arm, resumable) or a report another reads, not harness.record's file.
WRITE_THEIR_OWN = {"constitution_effect", "recipe_compare", "audit_revisions"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench.{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _arguments(name: str, workdir: Path) -> list[str]:
    """What a script's smoke run needs besides ``--smoke``: its output kept in the test's folder."""
    if name == "constitution_effect":
        return ["--out", str(workdir / "effect"), "--cache-dir", str(workdir / "cache")]
    if name == "sandbox_throughput":
        return ["--workers", "2"]
    if name == "recipe_compare":
        return ["--out", str(workdir / "recipe")]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SCRIPTS])
def test_smoke_mode_runs(name, workdir, capsys):
    bench = _load(name)
    arguments = ["--smoke", *_arguments(name, workdir)]
    results = bench.main(arguments)
    out = capsys.readouterr()
    sys.stdout.write(out.out)  # for the checks below, which read it too
    sys.stderr.write(out.err)
    if name not in WRITE_THEIR_OWN:
        _check_result_file(name, arguments, out.out)
    check = CHECKS.get(name)
    if check is not None:
        check(bench, arguments, results, workdir, capsys)


def _check_result_file(name: str, arguments: list[str], out: str) -> None:
    """The run's result file names the bench, the command, the machine, the checkout and the date; a smoke
    run's lies outside the tracked ``bench/results/``."""
    written = [line.removeprefix("results: ") for line in out.splitlines() if line.startswith("results: ")]
    assert written, f"{name} wrote no result file"
    path = Path(written[-1])
    entry = json.loads(path.read_text())
    assert entry["bench"] == name and entry["smoke"] is True and entry["results"]
    assert entry["command"] == " ".join(["python", f"bench/{name}.py", *arguments])
    assert entry["machine"]["cores"] and entry["machine"]["torch"] == torch.__version__ and entry["date"][:2] == "20"
    assert entry["commit"]
    assert BENCH / "results" not in path.parents


def _constitution_effect(bench, arguments, results, workdir, capsys):
    """Every arm runs, and a re-run reads each arm back instead of running it again."""
    from corruption import KINDS

    out = workdir / "effect"
    assert list(results) == list(bench.ARMS)
    corrupted = json.loads((out / "corruption.json").read_text())
    assert corrupted and {entry["kind"] for entry in corrupted} <= set(KINDS)
    clean = (out / "clean.jsonl").read_text().splitlines()
    assert len(clean) == len((out / "corrupted.jsonl").read_text().splitlines()) == 110  # --smoke: every 4th task
    for arm, result in results.items():
        samples = result["suites"]["tasks"]["samples"]
        assert len(samples) == 4 * 2  # --smoke: 4 tasks, 2 samples each
        assert ("fit_seconds" in result) == (arm != "base")
    assert "by_kind" in results["sft-constitution"]["stage"]
    no_critic = yaml.safe_load((out / "sft-no-critic" / "config.yaml").read_text())["data"]["init_args"]
    assert no_critic["constitution"] == "default" and no_critic["revise"]["candidates"] == 0
    assert no_critic["source"].endswith("corrupted.jsonl")
    table = (out / "table.md").read_text()
    for arm in bench.ARMS:
        assert f"| {arm} |" in table
    assert "pass@1 − sft-corrupted" in table and "pass@1 − sft-constitution" in table
    assert "The stage of sft-constitution: " in table and "The stage of sft-no-critic: " in table
    dpo = yaml.safe_load((out / "sft-constitution-dpo" / "config.yaml").read_text())
    assert dpo["model"]["class_path"].endswith("PreferenceLM") and "sft-constitution" in dpo["model"]["init_args"]["pretrained"]
    assert results["sft-constitution-dpo"]["optimizer_steps"] == 2

    capsys.readouterr()
    bench.main(arguments)  # every arm is read back, none re-run
    assert capsys.readouterr().out.count("done before") == len(bench.ARMS)


def _constitution_throughput(bench, arguments, rows, workdir, capsys):
    """Both rows review the same rows; the batched row reports its speed-up over the seed's way."""
    assert [row["setup"] for row in rows] == ["seed's way (one at a time)", "batched (batch 2)"]
    assert all(row["rows_reviewed"] == 2 and row["rows_per_s"] > 0 for row in rows)
    assert rows[0]["speedup"] == 1.0 and "speedup" in capsys.readouterr().out


def _cpu_attention(bench, arguments, rows, workdir, capsys):
    """Every length timed for the three kernels, the matmul path giving the fused kernel's output up to bf16."""
    assert [row["length"] for row in rows] == [16, 40]
    assert all(row[name] > 0 for row in rows for name in ("sdpa-bf16", "sdpa-fp32", "matmuls"))
    assert all(row["max_abs_difference"] < 0.05 for row in rows)
    assert "vs sdpa-bf16" in capsys.readouterr().out


def _dpo_step(bench, arguments, rows, workdir, capsys):
    assert [row["mode"] for row in rows] == ["cached", "live"]
    assert rows[0]["reference_s"] > 0 == rows[1]["reference_s"]
    assert all(row["pairs_per_s"] > 0 and row["peak_mib"] > 0 for row in rows)
    assert "cached vs live" in capsys.readouterr().out
    # bf16 autocast only where the CPU has native bf16, as the CLI's fallback: emulated bf16 would time the emulation
    import cai_lightning.devices as devices

    native = devices.cpu_supports_bf16()
    assert {row["precision"] for row in rows} == {"bf16-mixed" if native else "32-true"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devices, "cpu_supports_bf16", lambda: False)
        assert bench.precision(torch.device("cpu")) == "32-true"
        patch.setattr(devices, "cpu_supports_bf16", lambda: True)
        assert bench.precision(torch.device("cpu")) == "bf16-mixed"


def _memory_growth(bench, arguments, results, workdir, capsys):
    """Both arms ran in their own process for 2 epochs of 4 batches; the replay arm's second epoch had the first
    epoch's batches, the new arm's did not; the figures are the process's own."""
    assert list(results) == list(bench.ARMS) and all(len(runs) == 1 for runs in results.values())
    new, replay = results["new"][0]["epochs"], results["replay"][0]["epochs"]
    assert len(new) == len(replay) == 2 and all(len(epoch["shapes"]) == 4 for epoch in new + replay)
    assert replay[1]["shapes"] == replay[0]["shapes"] == new[0]["shapes"]  # the same seed draws the same first epoch
    assert new[1]["shapes"] != new[0]["shapes"]
    for epoch in new + replay:
        assert epoch["target_tokens_per_s"] > 0 and epoch["minor_faults"] > 0
        assert 0 < epoch["live_tensor_mib"] < epoch["resident_mib"]
    assert "replay ran" in capsys.readouterr().out


def _optimizer_step(bench, arguments, rows, workdir, capsys):
    """The three AdamW kernels time the same steps and end on the same weights (the bench checks it)."""
    assert [row["row"] for row in rows] == ["for-loop", "foreach", "fused"]
    assert all(row["ms_per_step"] > 0 and row["max_abs_difference"] <= 1e-5 for row in rows)
    assert rows[1]["vs_foreach"] == 1.0 and rows[1]["max_abs_difference"] == 0.0
    assert "× foreach" in capsys.readouterr().out


def _recipe_compare(bench, arguments, results, workdir, capsys):
    """Each arm is trained, validated and tested once; a re-run reads the results back, and the table's
    equal-time column reads each arm's validation curve up to the first arm's fit time."""
    out = workdir / "recipe"
    assert sorted(results) == [("a", 0), ("b", 0)]
    for (arm, seed), result in results.items():
        config = yaml.safe_load((out / arm / f"seed{seed}" / "config.yaml").read_text())
        assert config["seed_everything"] == config["data"]["init_args"]["shuffle_seed"] == seed
        assert not any(c["class_path"].endswith("BeamSearchSamples") for c in config["trainer"]["callbacks"])
        assert [epoch for _, epoch, _ in result["val_curve"]] == [0]
        assert result["test"]["tasks"]["tasks"] == 4 and 0 <= result["padding"] < 1
    assert results[("b", 0)]["overrides"] == {"model.attention_dropout": 0.1}
    table = (out / "table.md").read_text()
    assert "| a | 1 |" in table and "| b | 1 |" in table

    capsys.readouterr()
    assert bench.main(arguments) == results  # read back from result.json, nothing re-run
    assert "fit + test" not in capsys.readouterr().out
    arms = ["--arm", "a:model.dropout=0.1", "--arm", "b:model.attention_dropout=0.1", "--arm", "c:model.dropout=0.3"]
    assert bench.main([*arguments, *arms, "--report"]) == results  # c is not run
    assert "| c |" not in (out / "table.md").read_text()
    assert bench.main(["--study", "all", "--report", "--out", str(workdir / "none")]) == {}  # the studies' arms parse
    assert bench.parse_arm("x:") == ("x", {}) and bench.parse_arm("y:a.b=1,c.d=null") == ("y", {"a.b": 1, "c.d": None})
    with pytest.raises(SystemExit):
        bench.parse_arm("no-colon")


def _sandbox_throughput(bench, arguments, rows, workdir, capsys):
    setups = {row["setup"] for row in rows}
    assert {"bare python", "judge sandbox"} <= setups  # the previous sandbox too where git history is there
    assert all(row["passed"] == 4 for row in rows)
    assert "overhead a program (ms)" in capsys.readouterr().out  # the docs' table, printed


def _train_throughput(bench, arguments, rows, workdir, capsys):
    """Every row trains (bf16 rows only where the CPU has bf16); the Trainer given our sampler sees our
    batches (the same padding as our fit), and the ratios are to the Trainer with its own sampler."""
    from cai_lightning.devices import cpu_supports_bf16

    expected = [r for r in bench.ROWS if cpu_supports_bf16() or "bf16" not in r]
    assert [row["row"] for row in rows] == expected
    by_name = {row["row"]: row for row in rows}
    for row in rows:
        assert row["target_tokens_per_s"] > 0 and 0 < row["peak_share"] and 0 <= row["padding"] < 1
    assert by_name["hf-own-fp32"]["vs_hf_own"] == 1.0
    assert by_name["hf-ours-fp32"]["padding"] == by_name["ours-32-true"]["padding"]
    out = capsys.readouterr().out
    assert "× HF own" in out and "matmul peak (n=256)" in out
    assert not (workdir / "lightning_logs").exists()  # the bench writes no run folder


CHECKS = {
    "constitution_effect": _constitution_effect,
    "constitution_throughput": _constitution_throughput,
    "cpu_attention": _cpu_attention,
    "dpo_step": _dpo_step,
    "memory_growth": _memory_growth,
    "optimizer_step": _optimizer_step,
    "recipe_compare": _recipe_compare,
    "sandbox_throughput": _sandbox_throughput,
    "train_throughput": _train_throughput,
}


@pytest.mark.slow
def test_train_throughput_times_a_compiled_row_when_asked(workdir, capsys):
    """The compile row is opt-in (``--rows``): it trains through ``torch.compile`` on the same batches as eager,
    and the table can add MFU against a nominal peak (the GPU's figure)."""
    import torch._dynamo

    from cai_lightning.devices import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("the compile row is bf16: this CPU has no native bf16")
    bench = _load("train_throughput")
    assert bench.COMPILED not in bench.ROWS  # minutes of compiling on a CPU: never a default row
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    rows = bench.main(["--smoke", "--rows", "ours-bf16-mixed", bench.COMPILED, "--spec-tflops", "1"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the compiled row ran compiled graphs
    eager, compiled = rows
    assert (eager["row"], compiled["row"]) == ("ours-bf16-mixed", bench.COMPILED)
    assert eager["padding"] == compiled["padding"] and compiled["target_tokens_per_s"] > 0
    assert compiled["spec_share"] == pytest.approx(compiled["flops_per_s"] / 1e12)  # MFU over the nominal 1 TFLOP/s
    assert "% of 1 |" in capsys.readouterr().out


def test_constitution_effect_stage_only_reports_the_data_without_training(tmp_path, capsys):
    bench = _load("constitution_effect")
    record = tmp_path / "stage.json"
    figures = bench.main(["--smoke", "--stage-only", "--arms", "sft-no-critic", "--out", str(tmp_path / "effect"),
                          "--cache-dir", str(tmp_path / "cache"), "--record", str(record)])
    assert list(figures) == ["sft-no-critic"]
    by_kind = figures["sft-no-critic"]["stage"]["by_kind"]
    corrupted = json.loads((tmp_path / "effect" / "corruption.json").read_text())
    assert sum(sum(counts.values()) for counts in by_kind.values()) == len(corrupted)  # every corrupted row accounted for
    assert json.loads((tmp_path / "effect" / "stage-sft-no-critic.json").read_text())["stage"]["by_kind"] == by_kind
    assert not (tmp_path / "effect" / "runs").exists()  # nothing trained
    entry = json.loads(record.read_text())
    assert entry["smoke"] is True and entry["results"]["stages"]["sft-no-critic"]["by_kind"] == by_kind
    printed = capsys.readouterr().out
    assert "The stage of sft-no-critic in " in printed and "| corruption | rows |" in printed


@pytest.mark.slow
def test_constitution_effect_trains_each_arm_once_per_seed_and_records_the_summary(tmp_path, capsys):
    bench = _load("constitution_effect")
    out, record = tmp_path / "effect", tmp_path / "effect.json"
    arguments = ["--smoke", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--record", str(record),
                 "--arms", "base", "sft-corrupted", "sft-no-critic", "--train-seeds", "3", "4"]
    results = bench.main(arguments)
    assert sorted(results) == ["base", "sft-corrupted/seed-3", "sft-corrupted/seed-4", "sft-no-critic/seed-3", "sft-no-critic/seed-4"]
    config = yaml.safe_load((out / "sft-no-critic" / "seed-4" / "config.yaml").read_text())
    assert config["seed_everything"] == config["data"]["init_args"]["shuffle_seed"] == 4  # the batches' order too
    assert config["trainer"]["logger"]["init_args"]["name"] == "sft-no-critic/seed-4"
    entry = json.loads(record.read_text())
    assert entry["smoke"] is True and entry["command"].endswith("--train-seeds 3 4")
    [suite] = entry["results"]["suites"]
    arms = {arm["arm"]: arm for arm in suite["arms"]}
    assert list(arms) == ["base", "sft-corrupted", "sft-no-critic"]  # in ARMS' order
    assert arms["base"]["seeds"] == [None] and arms["sft-no-critic"]["seeds"] == [3, 4]
    assert len(arms["sft-no-critic"]["pass@1_by_seed"]) == 2 and len(arms["sft-no-critic"]["vs_by_seed"]["sft-corrupted"]) == 2
    mean, low, high = arms["sft-no-critic"]["vs"]["sft-corrupted"]
    assert low <= mean <= high and "base" in arms["sft-corrupted"]["vs"]
    assert set(entry["results"]["runs"]) == set(results) and entry["results"]["runs"]["base"]["commit"]
    assert "sft-no-critic" in entry["results"]["stages"]
    table = (out / "table.md").read_text()
    assert "training seeds 3, 4" in table and "(by seed: " in table and "| sft-no-critic |" in table

    bench.main(arguments)  # read back, not re-run
    assert capsys.readouterr().out.count("done before") == 5


def test_constitution_effect_sets_config_keys_of_every_arm(tmp_path):
    bench = _load("constitution_effect")
    args = bench.parse(["--max-steps", "24", "--greedy", "--set", "data.revise.principles=repair", "data.revise.batch_size=64"])
    assert (args.max_steps, args.samples, args.humaneval_limit, args.task_limit) == (24, 5, 164, None)  # not --smoke's
    assert args.override == {"data.revise.principles": "repair", "data.revise.batch_size": 64}
    base = resolved_config(BENCH.parent / "configs" / "coder-critic.yaml")  # an overlay of smollm2.yaml
    config = yaml.safe_load(bench.arm_config(base, "sft-constitution", args, tmp_path).read_text())
    revise = config["data"]["init_args"]["revise"]
    assert revise["principles"] == "repair" and revise["batch_size"] == 64
    assert revise["critic"] == "qwen2.5-coder-0.5b-instruct"  # the rest of the section kept
    assert config["data"]["init_args"]["prompt_style"] == "chat"  # smollm2.yaml's, through the include
    [evaluation] = [c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ExecutionEval")]
    assert evaluation["ks"] == [1] and evaluation["generation"]["do_sample"] is False  # --greedy
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--set", "principles=repair"])  # no section: refused before any work


def test_constitution_throughput_times_evaluation_one_task_at_a_time_against_batched(tmp_path, capsys):
    bench = _load("constitution_throughput")
    out = tmp_path / "eval.json"
    rows = bench.main(["--smoke", "--eval", "tiny", "--out", str(out)])
    assert [row["setup"] for row in rows] == ["one task at a time", "batched (2 tasks)", "greedy agreement"]
    assert rows[0]["speedup"] == 1.0 and all(row["samples_per_s"] > 0 for row in rows[:2])
    assert rows[2]["tasks"] == 2 and rows[2]["same_code"] == 1.0  # fp32, greedy: the same code either way
    assert json.loads(out.read_text())["results"] == rows and "samples/s" in capsys.readouterr().out


def test_lookup_replay_counts_the_steps_drafts_from_the_prompt_save():
    bench = _load("constitution_throughput")
    code = [10, 11, 12, 13, 14, 15, 16, 17]
    # a reply that copies the prompt's code: its first token written alone, then found in the prompt, up to
    # 5 a step (4 drafted and kept + the model's own), each step feeding 1 + 4 tokens
    assert bench.lookup_steps([1, 2, *code, 3], code, ngram=2, draft=4) == (3, 1 + 5 + 5)
    # nothing to copy: one token a step, nothing drafted but what the reply itself repeats
    assert bench.lookup_steps([1, 2, 3], [20, 21, 22, 23]) == (4, 4)
    assert bench.lookup_steps([1], []) == (0, 0)


def test_constitution_throughput_times_the_stages_two_decoders(tmp_path, capsys):
    bench = _load("constitution_throughput")
    out = tmp_path / "decoders.json"
    rows = bench.main(["--smoke", "--critic", "qwen2.5-coder-0.5b-instruct", "--out", str(out)])
    timed, kinds, agreement = rows[:3], rows[3:6], rows[6]
    assert [(row["decoder"], row["lookup"]) for row in timed] == [("transformers", 0), ("own", 0), ("own", 4)]
    assert timed[1]["rows_changed"] == timed[2]["rows_changed"]  # fp32: lookup writes the same
    assert [k["kind"] for k in kinds] == ["answer", "critique", "revision"]
    assert all(k["replies"] == 2 and k["steps"] <= k["limit"] and k["lookup_steps"] <= k["steps"] <= k["fed"] for k in kinds)
    assert timed[0]["speedup"] == 1.0 and all(row["rows_reviewed"] == 2 and row["generated_tokens"] > 0 for row in timed)
    assert timed[1]["prompt_tokens_reused"] > 0  # the revision prompts went on from the critique prompts
    # the offline critic in fp32, greedy: both decoders write the same
    assert agreement["setup"] == "greedy agreement" and agreement["answers"] == agreement["critiques"] == agreement["revisions"] == 1.0
    assert json.loads(out.read_text())["results"] == rows and "tokens/s" in capsys.readouterr().out
