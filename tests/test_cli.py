"""The CLI end to end, in-process through ``main([...])``, on the shipped configs shrunk with flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cai_lightning.callbacks import ExecutionEval
from cai_lightning.cli import main
from cai_lightning.evaluation import FAILURE_CLASSES
from conftest import TINY, make_humaneval_rows, make_mbpp_rows, make_rows, save_tiny_gpt2, save_tiny_llama, write_jsonl

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DEFAULT = str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")


def _fit_args(rows_file: Path, *extra: str) -> list[str]:
    return ["--config", DEFAULT, *TINY, f"--data.source={rows_file}", "--data.cache_dir=cache", *extra]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_shipped_config_parses(config, subcommand, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([subcommand, "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    model, data = printed["model"]["init_args"], printed["data"]["init_args"]  # class_path + init_args
    assert model["generation"]["num_beams"] >= model["generation"]["num_return_sequences"]
    assert data["source"]


@pytest.mark.slow
def test_fit_leaves_checkpoint_config_scalars_samples_and_export(workdir, rows_file):
    main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=2")])
    run = workdir / "lightning_logs" / "default" / "version_0"
    assert (run / "config.yaml").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["source"] == str(rows_file) and saved["model"]["init_args"]["n_layer"] == 1
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert len(list((run / "checkpoints").glob("epoch=*.ckpt"))) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/loss", "val/ppl", "val/acc", "train/loss", "train/lr", "train/target_tokens_per_s_epoch"} <= scalars
    val_loss = [e.value for e in events.Scalars("val/loss")]
    assert len(val_loss) == 2 and all(v == v for v in val_loss)  # one per epoch, no NaN
    [sample] = [t for t in events.Tags()["tensors"] if t.startswith("samples")]
    text = events.Tensors(sample)[-1].tensor_proto.string_val[0].decode()
    assert "### Instruction:" in text and "completion 1" in text  # 2 completions per prompt
    # the constitution stage's summary (the rows of make_rows have no docstrings: the fixer adds them)
    assert {"constitution/rows", "constitution/accepted_fixer", "constitution/violations_after/documentation"} <= scalars
    assert events.Scalars("constitution/violations_before/documentation")[0].value > 0
    assert events.Scalars("constitution/violations_after/documentation")[0].value == 0
    [summary] = [t for t in events.Tags()["tensors"] if t.startswith("constitution/summary")]
    assert "rows violating each principle" in events.Tensors(summary)[0].tensor_proto.string_val[0].decode()

    from transformers import pipeline

    generator = pipeline("text-generation", model=str(run / "hf_model"))
    out = generator("### Instruction:\nAdd.\n\n### Output:\n", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("### Instruction:")


@pytest.mark.slow
def test_resume_continues_the_global_step_in_the_same_run(workdir, rows_file):
    main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=1")])
    last = workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["global_step"] > 0
    main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=2"), "--ckpt_path=last"])
    resumed = torch.load(last, weights_only=False)
    assert resumed["global_step"] == 2 * first["global_step"]
    assert resumed["epoch"] == 1
    assert resumed["lr_schedulers"][0]["last_epoch"] == 2 * first["global_step"]
    assert not (workdir / "lightning_logs/default/version_1").exists()  # resumed in place


@pytest.mark.slow
def test_predict_and_test_from_a_checkpoint(workdir, rows_file, capsys):
    main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=1")])
    out = workdir / "preds.jsonl"
    main(["predict", *_fit_args(rows_file), "--ckpt_path=last", "--trainer.callbacks+=cai_lightning.callbacks.JsonlPredictionWriter", f"--trainer.callbacks.output_path={out}"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    dm_test_size = json.loads(next((workdir / "cache").glob("*/manifest.json")).read_text())["splits"]["test"]["examples"]
    assert len(lines) == dm_test_size > 0
    assert all(len(item["completions"]) == 2 and "### Output:" in item["prompt"] for item in lines)
    assert f"to {out}" in capsys.readouterr().out

    cli = main(["test", *_fit_args(rows_file), "--ckpt_path=last"])
    metrics = cli.trainer.callback_metrics
    assert {"test/loss", "test/ppl", "test/acc", "test/pass@1", "test/pass@5", "test/syntax_valid"} <= set(metrics)
    assert torch.isclose(metrics["test/ppl"], torch.exp(metrics["test/loss"]))
    shares = [float(metrics[f"test/failure_class/{name}"]) for name in FAILURE_CLASSES]  # every sample in one class
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    # every held-out task was sampled 5 times and each sample run in the sandbox
    run = workdir / "lightning_logs/default/version_0"  # test and predict wrote into the checkpoint's run
    assert [p.name for p in run.parent.iterdir()] == ["version_0"]
    assert {"config-predict-1.yaml", "config-test-1.yaml"} <= {p.name for p in run.iterdir()}
    samples = [json.loads(line) for line in (run / "execution_tasks.jsonl").read_text().splitlines()]
    assert len(samples) == 5 * dm_test_size
    assert all(s["status"] in {"passed", "failed", "error", "timeout", "killed"} for s in samples)
    assert all(s["failure"] in FAILURE_CLASSES for s in samples)
    assert "pass@5" in capsys.readouterr().out


@pytest.mark.slow
def test_test_builds_no_constitution_stage_and_reuses_the_one_a_fit_built(workdir, rows_file, capsys):
    """With a pretrained tokenizer the test split tokenizes the same with or without the stage; a trained
    BPE learns from the revised training texts, so the stage always runs with one."""
    model_dir = save_tiny_gpt2(workdir / "tiny-gpt2")
    args = [*_fit_args(rows_file, "--data.max_length=256"), f"--model.pretrained={model_dir}"]  # a constitution
    cli = main(["test", *args])
    assert "test reads the test split only" in capsys.readouterr().out
    assert not list((workdir / "cache").glob("constitution/*/chunk-*.json"))  # no critic ran
    assert "constitution" not in cli.datamodule.manifest
    test_split = cli.datamodule.splits["test"]["input_ids"]
    main(["fit", *args, "--trainer.max_epochs=1"])
    assert list((workdir / "cache").glob("constitution/*/chunk-*.json"))
    capsys.readouterr()
    cli = main(["test", *args, "--ckpt_path=last"])
    assert "test reads the test split only" not in capsys.readouterr().out  # the fit's dataset, reused
    assert "constitution" in cli.datamodule.manifest
    assert cli.datamodule.splits["test"]["input_ids"] == test_split  # the same test split either way


@pytest.mark.slow
def test_last_ckpt_is_a_link_to_the_best_checkpoint_not_a_second_copy(workdir, rows_file):
    cli = main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=2", "--data.constitution=null")])
    folder = workdir / "lightning_logs/default/version_0/checkpoints"
    [best] = [p for p in folder.iterdir() if not p.is_symlink()]  # one full checkpoint written...
    last = folder / "last.ckpt"
    assert last.is_symlink() and last.resolve() == best.resolve()  # ...and last.ckpt a link to it
    assert Path(cli.trainer.checkpoint_callback.best_model_path).resolve() == best.resolve()
    cli = main(["validate", *_fit_args(rows_file, "--data.constitution=null"), "--ckpt_path=last"])
    assert workdir / cli.trainer.ckpt_path == last  # `last` still finds it, and the command writes into its run
    assert sorted(p.name for p in (workdir / "lightning_logs/default").iterdir()) == ["version_0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "task_ids"),
    [(make_mbpp_rows, ["600", "601", "602"]), (make_humaneval_rows, ["HumanEval/0", "HumanEval/1", "HumanEval/2"])],
    ids=["mbpp", "humaneval"],
)
def test_a_task_file_is_the_test_split_that_test_scores_and_predict_completes(workdir, rows_file, make, task_ids):
    rows = make(3)
    tasks = write_jsonl(workdir / "tasks.jsonl", rows)
    args = [*_fit_args(rows_file, "--data.max_length=256", "--model.n_positions=256"), f"--data.test_source={tasks}"]
    cli = main(["test", *args])
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, ExecutionEval)]
    samples = evaluator.reports["tasks"].samples
    assert sorted({s.task_id for s in samples}) == task_ids and len(samples) == 5 * 3  # every task, n=5 each
    assert "test/loss" in cli.trainer.callback_metrics
    # the constitution stage revised the training rows only: the test split holds the file's reference code
    references = [r.get("code") or r["prompt"] + r["canonical_solution"] for r in rows]
    assert cli.datamodule.splits["test"]["output"] == references
    out = workdir / "predictions.jsonl"
    main(["predict", *args, "--trainer.callbacks+=cai_lightning.callbacks.JsonlPredictionWriter",
          f"--trainer.callbacks.output_path={out}"])
    predictions = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["prompt"] for p in predictions] == cli.datamodule.tokenizer.batch_decode(
        [e["input_ids"] for e in cli.datamodule.prompt_examples("test")], skip_special_tokens=True)
    assert len(predictions) == 3


def test_a_task_file_of_unknown_columns_exits_2_naming_what_is_missing(workdir, rows_file, capsys):
    path = write_jsonl(workdir / "qa.jsonl", [{"question": "Add 1 and 2.", "answer": "3"}])
    with pytest.raises(SystemExit) as exit_:
        main(["test", *_fit_args(rows_file), f"--data.test_source={path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line == (
        f"error: data.test_source: {path} matches no task format: it lacks instruction, output (this project's format); "
        "task_id, prompt, entry_point, test (HumanEval's); text, code, test_list (MBPP's) (columns found: question, answer)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data.source=missing.jsonl"], "file not found: missing.jsonl"),
        (["--data.source=rows.txt"], "unknown format '.txt'"),
        (["--data.no_such_key=1"], "no_such_key"),
        (["--data.batch_size=many"], "batch_size"),
        (["--model.generation.num_return_sequences=9"], "num_return_sequences"),
        pytest.param(["--data.max_length=256"], "exceeds model.n_positions", marks=pytest.mark.slow),  # builds the dataset first
        (["--data.revise.rounds=0"], "data.revise.rounds must be at least 1, got 0"),
        (["--data.constitution=missing.yaml"], "constitution missing.yaml: cannot read it"),
        (["--data.revise.critic=/nonexistent/critic"], "could not load the critic model '/nonexistent/critic'"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(workdir, rows_file, args, expected, capsys):
    (workdir / "rows.txt").write_text("x")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *_fit_args(rows_file), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def _critic_without_eos(folder: Path) -> Path:
    """A causal LM whose tokenizer has neither an EOS token nor a chat template: nothing could end a turn."""
    save_tiny_gpt2(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["eos_token"] = None
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("flag", "make", "expected"),
    [
        ("--model.pretrained", lambda d: (d / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf") and d / "fake.gguf", "is not a GGUF file"),
        ("--model.pretrained", lambda d: d / "missing-model", "model.pretrained"),
        ("--data.revise.critic", lambda d: _critic_without_eos(d / "no-eos"), "no EOS token"),
    ],
    ids=["not-gguf", "missing-model", "critic-without-eos"],
)
def test_bad_models_exit_2_naming_the_flag_and_leave_no_cache(workdir, rows_file, flag, make, expected, capsys, monkeypatch):
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(workdir / "models-cache"))  # where GGUF files are converted
    path = make(workdir)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *_fit_args(rows_file), f"{flag}={path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and flag.removeprefix("--") in err and "Traceback" not in err
    assert not list((workdir / "cache").glob("*/manifest.json"))  # nothing built
    assert not list(workdir.glob("models-cache/models/*"))  # nothing converted, nothing half-written
    assert not list((workdir / "cache").glob("constitution/*/chunk-*.json"))


def test_bad_row_through_the_cli(workdir, capsys):
    rows = make_rows(30)
    rows[11]["output"] = 42
    path = workdir / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *_fit_args(path)])
    assert exit_.value.code == 2
    assert f"{path}: line 12: field 'output' must be a string, got int" in capsys.readouterr().err
    assert not any((workdir / "cache").glob("*/manifest.json"))


@pytest.mark.slow
def test_gpt2_medium_recipe_with_local_stand_ins_trains_a_step(workdir):
    """configs/gpt2-medium.yaml with the Hub ids swapped for a tiny GPT-2 saved with save_pretrained and
    a local folder in the Hub dataset's layout and schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    model_dir = save_tiny_gpt2(workdir / "gpt2-medium-stand-in")
    repo = workdir / "python_code_instructions_18k_alpaca" / "data"
    repo.mkdir(parents=True)
    rows = make_rows(120)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("instruction", "input", "output", "prompt")}), repo / "train.parquet")
    config = str(Path(DEFAULT).with_name("gpt2-medium.yaml"))
    cli = main([
        "fit", "--config", config, f"--model.pretrained={model_dir}", f"--data.source={repo.parent}",
        "--data.cache_dir=cache", "--data.num_workers=0", "--trainer.accelerator=cpu", "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1", "--model.generation.max_new_tokens=4", "--data.max_length=256",
        "--trainer.enable_progress_bar=false",
    ])
    assert cli.trainer.global_step == 1
    assert cli.model.model.training  # from_pretrained hands back eval mode: dropout must be back on
    assert cli.model.model.config.pad_token_id == len(cli.datamodule.tokenizer) - 1  # [PAD] appended
    assert (workdir / "lightning_logs/gpt2-medium/version_0/hf_model/config.json").exists()


@pytest.mark.slow
def test_a_llama_fits_resumes_exports_predicts_and_tests(workdir, rows_file, capsys):
    """Any causal LM, not just GPT-2: a tiny Llama in SmolLM2's layout (pad == eos in its tokenizer, tied
    embeddings, bf16 weights) through the whole CLI, under the default config's bf16-mixed."""
    model_dir = save_tiny_llama(workdir / "tiny-llama")
    args = [*_fit_args(rows_file), f"--model.pretrained={model_dir}", "--data.constitution=null"]
    main(["fit", *args, "--trainer.max_epochs=1"])
    last = workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt"
    first = torch.load(last, weights_only=False)
    assert first["global_step"] > 0 and first["state_dict"]["model.model.embed_tokens.weight"].dtype == torch.float32
    cli = main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"])
    assert cli.trainer.global_step == 2 * first["global_step"]
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])

    from transformers import AutoModelForCausalLM, LlamaForCausalLM, pipeline

    export = workdir / "lightning_logs/default/version_0/hf_model"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert type(model) is LlamaForCausalLM and model.config.pad_token_id == 400 and model.config.eos_token_id == 2
    generator = pipeline("text-generation", model=str(export))
    assert generator("### Instruction:\nAdd.\n\n### Output:\n", max_new_tokens=3, do_sample=False)[0]["generated_text"]

    out = workdir / "preds.jsonl"
    main(["predict", *args, "--ckpt_path=last", "--trainer.callbacks+=cai_lightning.callbacks.JsonlPredictionWriter",
          f"--trainer.callbacks.output_path={out}"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines and all(len(item["completions"]) == 2 for item in lines)
    cli = main(["test", *args, "--ckpt_path=last"])
    assert {"test/loss", "test/pass@1", "test/pass@5", "test/syntax_valid"} <= set(cli.trainer.callback_metrics)
    assert "pass@5" in capsys.readouterr().out


def test_max_length_beyond_a_pretrained_models_context_is_a_user_error(workdir, rows_file, capsys):
    model_dir = save_tiny_llama(workdir / "tiny-llama")  # max_position_embeddings=256
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *_fit_args(rows_file), f"--model.pretrained={model_dir}", "--data.constitution=null",
              "--data.max_length=300"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"data.max_length (300) exceeds the context length of model.pretrained='{model_dir}' (256 positions)" in err


@pytest.mark.slow
def test_default_config_as_shipped_runs_on_the_builtin_task_set(workdir):
    """configs/default.yaml unchanged but for flags that shorten it (and a temporary cache): the random critic
    writes 48 tokens of revision instead of 192 (the same machinery; the stage was 3/4 generating them)."""
    cli = main([
        "fit", "--config", DEFAULT, "--data.cache_dir=cache", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--model.generation.max_new_tokens=4", "--data.revise.revision_tokens=48",
    ])
    assert cli.trainer.global_step == 2
    splits = cli.datamodule.manifest["splits"]
    assert splits["train"]["examples"] >= 60 and splits["val"]["examples"] > 0 and splits["test"]["examples"] > 0
    assert cli.datamodule.hparams.source == "builtin"


@pytest.mark.slow
def test_checkpoint_with_another_tokenizer_is_refused(workdir, rows_file, capsys):
    main(["fit", *_fit_args(rows_file, "--trainer.max_epochs=1")])
    with pytest.raises(SystemExit) as exit_:
        main(["test", *_fit_args(rows_file, "--data.vocab_size=310"), "--ckpt_path=last"])
    assert exit_.value.code == 2
    assert "trained with a different tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("native", [False, True])
def test_bf16_mixed_falls_back_to_fp32_on_a_cpu_without_native_bf16(native, workdir, monkeypatch):
    from cai_lightning import devices
    from cai_lightning.cli import build

    monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: native)
    config = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    with pytest.warns(UserWarning, match="no native bf16 support: trainer.precision bf16-mixed -> 32-true") if not native else _no_warning():
        cli = build(["--config", str(config), "--trainer.accelerator=cpu", "--data.constitution=null"])
    assert cli.config.fit.trainer.precision == ("bf16-mixed" if native else "32-true")


def _no_warning():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def caught():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            yield
        assert not [w for w in seen if "native bf16" in str(w.message)]

    return caught()
