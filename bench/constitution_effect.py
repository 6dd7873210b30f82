"""Does the constitution make better data, and does better data make a better model? Six arms, one run.

    python bench/constitution_effect.py [--config configs/smollm2.yaml] [--out bench/results/constitution_effect]
        [--fraction 0.3] [--epochs 1 | --max-steps N] [--dpo-steps N] [--samples 5 | --greedy] [--humaneval-limit 164]
        [--train-seeds S [S ...]] [--device cpu|cuda] [--stage-only] [--set SECTION.KEY=VALUE ...]
        [--record FILE] [--smoke]

Same base model (``model.pretrained`` of the config: SmolLM2-135M-Instruct), same seed, same settings and
the same number of optimizer steps in every arm; the shipped task set, whose training outputs are
corrupted the way scraped data is (a seeded ``--fraction`` of them, see ``bench/corruption.py``:
syntax errors, wrong operators, off-by-one, missing returns, unsafe calls). val and test rows are never
corrupted: every arm is scored on the same clean held-out tasks.

  base               the pretrained model, not fine-tuned
  sft-clean          SFT on the shipped (clean) outputs
  sft-corrupted      SFT on the corrupted outputs
  sft-constitution   SFT on the corrupted outputs after the constitution stage (the model as its own
                     critic, fixers on, rows still failing a must-pass principle dropped)
  sft-no-critic      the same stage without the critic (``data.revise.candidates: 0``): only the fixers
                     (ruff, a docstring) revise, and the same rows are dropped. What the critic adds is
                     sft-constitution minus this arm; what filtering alone does is this arm minus sft-corrupted
  sft-constitution-dpo  sft-constitution's export, then DPO (``cai_lightning.dpo``) on the stage's preference
                     pairs for ``--dpo-steps`` more optimizer steps: RL-CAI's second half (needs sft-constitution)

Model-level figures (``test`` with ``ExecutionEval``, ``--samples`` per task at temperature 0.8, or one
greedy sample with ``--greedy``): pass@1,
pass@5, syntax-valid and unsafe shares (samples with a safety finding), on the held-out tasks and on
HumanEval (the first ``--humaneval-limit`` problems), each with a 95% bootstrap interval over tasks, and
each fine-tuned arm's pass@1 difference from ``sft-corrupted`` with a paired bootstrap interval.
``--train-seeds 0 1 2`` trains every fine-tuned arm once per seed (``data.shuffle_seed``: the order of the
batches; ``seed_everything``: the dropout masks of a model that has dropout, which SmolLM2 has not; the
pretrained weights are the same), since one training run's swing can be as large as the
differences between arms: an arm's score on a task is then its mean over the seeds, and the table also gives
each seed's pass@1 and its paired difference, seed against the same seed.
Data-level figures: what the stage did with each kind of corruption (repaired by the critic / by the
fixer, dropped, still failing) and its summary.

``--stage-only`` runs the constitution stage of the constitution arms and reports only the data-level figures
(no training, no scoring): with ``--config configs/coder-critic.yaml``, what the coder critic repairs. It
writes ``<out>/stage-<arm>.json`` and its result file (default ``bench/results/constitution_effect-stage.json``).

Each arm writes ``<out>/<arm>/result.json`` (``<out>/<arm>/seed-<s>/result.json`` with ``--train-seeds``) when
done and is skipped on a re-run: run it in the background (``nohup python bench/constitution_effect.py >
effect.log 2>&1 &``) and re-run after a kill. ``<out>`` holds checkpoints and is not tracked; the figures of
every arm done in it go to ``--record`` (default ``bench/results/constitution_effect.json``, which
``bench/report.py`` renders into the docs) and to ``<out>/table.md``.
``--smoke`` runs the whole machinery in about a minute with a tiny random GPT-2 and the fixers only
(no critic): CI runs it so the benchmark cannot rot. Its figures mean nothing.

Why one long module: each arm's config, run, scoring and the summary across arms and seeds are one
experiment, resumable arm by arm from the one folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import harness
import report
import yaml

from cai_lightning.compare import interval, paired

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("base", "sft-clean", "sft-corrupted", "sft-constitution", "sft-no-critic", "sft-constitution-dpo")
DPO_ARM = "sft-constitution-dpo"
NO_CRITIC_ARM = "sft-no-critic"


# ------------------------------------------------------------------------------------------------- data
def write_sources(out: Path, data: dict, fraction: float, seed: int, every: int = 1) -> dict:
    """The shipped tasks (every ``every``-th: ``--smoke`` takes a quarter) as ``clean.jsonl`` and, with a
    seeded share of the *training* outputs corrupted, ``corrupted.jsonl`` (same rows, same order, so every
    task lands in the same split); returns the log."""
    from corruption import corrupt
    from cai_lightning.data.records import builtin_files, split_of

    rows = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines() if line.strip()]
    rows = rows[::every]
    train = [i for i, r in enumerate(rows) if split_of(
        {**r, "input": r.get("input", "")}, data["val_fraction"], data["test_fraction"], data["split_seed"]) == "train"]
    corrupted_train, log = corrupt([rows[i] for i in train], fraction, seed)
    corrupted = list(rows)
    for i, row in zip(train, corrupted_train):
        corrupted[i] = row
    out.mkdir(parents=True, exist_ok=True)
    for name, items in (("clean", rows), ("corrupted", corrupted)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (out / "corruption.json").write_text(json.dumps(log, indent=1))
    return {"rows": len(rows), "train_rows": len(train), "corrupted": len(log), "log": log}


def split_settings(data: dict) -> dict:
    """``val_fraction``, ``test_fraction`` and ``split_seed`` of a config's data settings (``data.init_args`` of a
    resolved config), the DataModule's defaults where they are left out."""
    import inspect

    from cai_lightning.data.datamodule import CodeInstructionDataModule

    defaults = inspect.signature(CodeInstructionDataModule).parameters
    return {name: data.get(name, defaults[name].default) for name in ("val_fraction", "test_fraction", "split_seed")}


# ------------------------------------------------------------------------------------------------- config
def run_name(arm: str, seed: int | None) -> str:
    """Where one run of an arm lives under ``<out>`` (and ``<out>/runs``): ``arm``, or ``arm/seed-<s>``."""
    return arm if seed is None else f"{arm}/seed-{seed}"


def planned_runs(arms, seeds: list[int] | None) -> list[tuple[str, int | None]]:
    """(arm, training seed) of every run of ``arms``: one per arm, or one per seed of each fine-tuned arm with
    ``--train-seeds`` (``base`` is not trained: once)."""
    return [(arm, seed) for arm in arms for seed in ([None] if arm == "base" else seeds or [None])]


def arm_config(base: dict, arm: str, args: argparse.Namespace, out: Path, seed: int | None = None) -> Path:
    """The config of one arm: the base config (resolved, :func:`cai_lightning.cli.resolved_config`) with the
    arm's data, logger folder and evaluation settings, and ``seed`` as ``seed_everything`` where given;
    written in full, valid ``--config`` input."""
    from cai_lightning.cli import set_dotted

    config = json.loads(json.dumps(base))  # a deep copy
    name = run_name(arm, seed)
    trainer, data = config["trainer"], config["data"]["init_args"]
    if seed is not None:  # the order of the batches, and the dropout masks of a model that has dropout
        config["seed_everything"] = data["shuffle_seed"] = seed
    trainer["logger"]["init_args"].update(save_dir=str(out / "runs"), name=name)
    trainer["enable_progress_bar"] = False
    # equal optimizer steps in every arm: the drop policy leaves the constitution arm fewer rows, which
    # it then sees more often, rather than training it for less
    trainer["max_epochs"], trainer["max_steps"] = (None, args.max_steps) if args.max_steps else (args.epochs, -1)
    if args.device:
        trainer["accelerator"] = "gpu" if args.device == "cuda" else args.device
        data.setdefault("revise", {})["device"] = args.device
    constitution_arm = arm in ("sft-constitution", NO_CRITIC_ARM, DPO_ARM)
    data["source"] = str(out / ("corrupted.jsonl" if arm == "sft-corrupted" or constitution_arm else "clean.jsonl"))
    data["constitution"] = "default" if constitution_arm else None
    if arm == NO_CRITIC_ARM:
        data.setdefault("revise", {}).update(candidates=0, fixers=True)
    if args.cache_dir:
        data["cache_dir"] = args.cache_dir
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ExecutionEval"):
            init = callback.setdefault("init_args", {})
            init["humaneval"] = args.humaneval_limit > 0
            init["limit"] = args.task_limit
            init["humaneval_limit"] = args.humaneval_limit or None
            init["generation"]["num_return_sequences"] = args.samples
            init["ks"] = [k for k in (1, 5) if k <= args.samples]
            if args.greedy:  # one greedy sample per task: no sampling noise between arms
                init["generation"].update(num_beams=1, do_sample=False, num_return_sequences=1)
                init["ks"] = [1]
            if args.eval_tokens:
                init["generation"]["max_new_tokens"] = args.eval_tokens
            init["extract_code"] = True  # the base model answers in markdown
        if callback["class_path"].endswith("BeamSearchSamples"):
            callback.setdefault("init_args", {})["num_prompts"] = 1
    for key, value in args.override.items():  # --smoke: a tiny model, a few steps; --set
        if key.partition(".")[0] not in config:
            raise KeyError(f"--set {key}: no section {key.partition('.')[0]!r} in the config")
        set_dotted(config, key, value)  # data.revise.principles: data.init_args.revise.principles
    if arm == DPO_ARM:
        config = dpo_config(config, out, args, seed)
    path = out / name / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dpo_config(sft: dict, out: Path, args: argparse.Namespace, seed: int | None = None) -> dict:
    """The DPO arm's config from sft-constitution's: ``PreferenceLM`` starting from that arm's export (of the
    same training seed), on the same data (its stage, named by the same critic, is reused, and so are its
    pairs), ``--dpo-steps`` steps."""
    sft_runs = out / "runs" / run_name("sft-constitution", seed)
    exports = sorted(sft_runs.glob("version_*/hf_model"), key=lambda p: p.stat().st_mtime)
    if not exports:
        raise SystemExit(f"{DPO_ARM} starts from sft-constitution's export: run that arm first (--arms sft-constitution {DPO_ARM})")
    config = json.loads(json.dumps(sft))
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    revise = data.setdefault("revise", {})
    revise["critic"] = revise.get("critic") or model.get("pretrained") or "random"  # the SFT stage's critic, by name
    kept = ("generation", "weight_decay", "betas", "warmup_fraction", "min_lr_ratio")
    config["model"] = {"class_path": "cai_lightning.dpo.PreferenceLM", "init_args": {
        **{k: v for k, v in model.items() if k in kept},
        "pretrained": str(exports[-1]), "beta": args.dpo_beta, "learning_rate": args.dpo_lr, "sft_weight": args.dpo_sft_weight,
    }}
    config["data"] = {"class_path": "cai_lightning.data.preference.PreferenceDataModule", "init_args": {**data, "pairs": "stage"}}
    trainer = config["trainer"]
    trainer["max_epochs"], trainer["max_steps"] = None, args.dpo_steps
    return config


# ------------------------------------------------------------------------------------------------- scoring
def per_task(samples: list[dict], ks: list[int]) -> dict[str, dict[str, float]]:
    """Per task: pass@k (unbiased, from its n samples), and the shares of syntax-valid and unsafe samples."""
    from cai_lightning.evaluation import pass_at_k

    by_task: dict[str, list[dict]] = defaultdict(list)
    for sample in samples:
        by_task[sample["task_id"]].append(sample)
    scores = {}
    for task, items in by_task.items():
        n, c = len(items), sum(s["status"] == "passed" for s in items)
        scores[task] = {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}
        scores[task]["syntax_valid"] = sum(s["syntax_valid"] for s in items) / n
        scores[task]["unsafe"] = sum(bool(s.get("safety")) for s in items) / n
    return scores


# ------------------------------------------------------------------------------------------------- arms
def run_arm(arm: str, config: Path, out: Path, commit: str) -> dict:
    """fit (except for ``base``) then ``test`` through the CLI, in this process; the arm's result, which
    names ``commit``, the checkout this process started from (its code is what runs, whatever the
    checkout holds by the time the arm starts)."""
    from cai_lightning.callbacks import ExecutionEval
    from cai_lightning.cli import main

    result: dict = {"arm": arm, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "commit": commit}
    manifest = None
    if arm != "base":
        start = time.perf_counter()
        cli = main(["fit", "--config", str(config)])
        result["fit_seconds"] = round(time.perf_counter() - start, 1)
        result["optimizer_steps"] = cli.trainer.global_step
        manifest = cli.datamodule.manifest
        if "constitution" in manifest:
            result["stage"] = stage_figures(cli.datamodule, out)
        del cli
        gc.collect()
    start = time.perf_counter()
    cli = main(["test", "--config", str(config), *([] if arm == "base" else ["--ckpt_path", "last"])])
    result["test_seconds"] = round(time.perf_counter() - start, 1)
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, ExecutionEval)]
    result["suites"] = {}
    for suite, scored in evaluator.reports.items():
        samples = [{"task_id": s.task_id, "status": s.status, "syntax_valid": s.syntax_valid, "safety": s.safety} for s in scored.samples]
        result["suites"][suite] = {"ks": list(evaluator.ks), "samples": samples}
    result["data"] = (manifest or cli.datamodule.manifest)["splits"]
    del cli
    gc.collect()
    return result


def run_stage_only(arm: str, config: Path, out: Path) -> dict:
    """The constitution stage of an arm, through its DataModule as ``fit`` builds it (the same cached
    stage), without a model or a trainer: its data-level figures."""
    from jsonargparse import ArgumentParser

    from cai_lightning.data.datamodule import CodeInstructionDataModule

    settings = yaml.safe_load(config.read_text())  # written by arm_config: resolved in full
    data = settings["data"]["init_args"]
    data.setdefault("tokenizer", settings["model"]["init_args"].get("pretrained"))  # the CLI's link, by hand
    parser = ArgumentParser()
    parser.add_class_arguments(CodeInstructionDataModule, "data")
    datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
    start = time.perf_counter()
    datamodule.prepare_data()
    datamodule.setup()
    return {"arm": arm, "stage_seconds": round(time.perf_counter() - start, 1), "stage": stage_figures(datamodule, out)}


def stage_figures(datamodule, out: Path) -> dict:
    """What the constitution stage did with each corrupted row, by kind of corruption, and its summary."""
    from cai_lightning.constitution.report import failing_must_pass

    summary = datamodule.manifest["constitution"]
    log = {entry["task_id"]: entry["kind"] for entry in json.loads((out / "corruption.json").read_text())}
    kept = {row["task_id"]: json.loads(row["provenance"]) for row in datamodule.splits["train"] if row["provenance"]}
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for task_id, kind in log.items():
        record = kept.get(task_id)
        if record is None:
            outcomes[kind]["dropped"] += 1
            continue
        must_pass = summary["must_pass"]
        passes = not failing_must_pass(record["findings_after"], must_pass)
        accepted = [step["candidates"][step["accepted"]]["source"] for step in record["steps"] if step["accepted"] is not None]
        if not passes:
            outcomes[kind]["still failing (kept)"] += 1
        elif not failing_must_pass(record["findings_before"], must_pass):
            outcomes[kind]["passed before"] += 1  # a corruption the must-pass checks do not see
        else:
            outcomes[kind][f"repaired by {accepted[-1] if accepted else '?'}"] += 1
    return {"summary": summary, "by_kind": {kind: dict(counts) for kind, counts in sorted(outcomes.items())}}


# ------------------------------------------------------------------------------------------------- report
METRICS = ("pass@1", "pass@5", "syntax_valid", "unsafe")


def summarize(results: dict[str, dict], runs: list[tuple[str, int | None]]) -> dict:
    """The figures of every run in ``results`` (by run name; ``runs`` gives each one's arm and seed): per suite,
    each arm's metrics over the tasks every arm scored (a task's score: its mean over the arm's runs), with 95%
    bootstrap intervals over tasks; each arm's pass@1 difference from the arms ``BASELINES`` names, paired
    over tasks, pooled and seed by seed; what each
    constitution stage did with the corrupted rows; and when each run ran, on which checkout, how long."""
    by_arm: dict[str, list[tuple[int | None, dict]]] = defaultdict(list)
    for arm, seed in runs:
        if run_name(arm, seed) in results:
            by_arm[arm].append((seed, results[run_name(arm, seed)]))
    suites = sorted({suite for r in results.values() for suite in r["suites"]}, key=lambda s: s != "tasks")
    summary: dict = {"suites": [], "stages": {}, "runs": {}}
    for suite in suites:
        scored = {arm: [(seed, per_task(r["suites"][suite]["samples"], r["suites"][suite]["ks"]))
                        for seed, r in done if suite in r["suites"]] for arm, done in by_arm.items()}
        scored = {arm: runs_ for arm, runs_ in scored.items() if runs_}
        # the tasks every run scored (arms may have been run with other limits): the same tasks in each row
        common = set.intersection(*(set(s) for runs_ in scored.values() for _, s in runs_))
        metrics = [m for m in METRICS if all(m in next(iter(s.values()), {}) for runs_ in scored.values() for _, s in runs_)]
        pooled = {arm: {task: {m: sum(s[task][m] for _, s in runs_) / len(runs_) for m in metrics} for task in common}
                  for arm, runs_ in scored.items()}
        rows = []
        for arm in ARMS:
            if arm not in scored:
                continue
            row = {"arm": arm, "seeds": [seed for seed, _ in scored[arm]],
                   "metrics": {m: list(interval([pooled[arm][t][m] for t in sorted(common)])) for m in metrics},
                   "pass@1_by_seed": [sum(s[t]["pass@1"] for t in common) / len(common) for _, s in scored[arm]],
                   "vs": {}, "vs_by_seed": {}}
            for baseline in BASELINES[arm]:
                if baseline not in scored:
                    continue
                row["vs"][baseline] = list(paired({t: v["pass@1"] for t, v in pooled[arm].items()},
                                                  {t: v["pass@1"] for t, v in pooled[baseline].items()}))
                theirs = dict(scored[baseline])
                row["vs_by_seed"][baseline] = [
                    sum(s[t]["pass@1"] - theirs[seed][t]["pass@1"] for t in common) / len(common)
                    for seed, s in scored[arm] if seed in theirs]
            rows.append(row)
        summary["suites"].append({"suite": suite, "tasks": len(common), "arms": rows})
    for arm, done in by_arm.items():
        stage = next((r["stage"] for _, r in done if "stage" in r), None)
        if stage is not None and arm != DPO_ARM:  # the DPO arm reuses sft-constitution's stage
            summary["stages"][arm] = {"by_kind": stage["by_kind"], "summary": stage["summary"]}
        for seed, r in done:
            summary["runs"][run_name(arm, seed)] = {
                key: r.get(key) for key in ("date", "commit", "fit_seconds", "test_seconds", "optimizer_steps")}
            summary["runs"][run_name(arm, seed)]["train_rows"] = r["data"].get("train", {}).get("examples")
    return summary


# which arms each arm's pass@1 is compared with, paired over tasks (against base: what fine-tuning did)
BASELINES = {
    "base": ("sft-corrupted",), "sft-clean": ("sft-corrupted", "base"), "sft-corrupted": ("base",),
    "sft-constitution": ("sft-corrupted", "base"), NO_CRITIC_ARM: ("sft-corrupted", "sft-constitution", "base"),
    DPO_ARM: ("sft-corrupted", "sft-constitution", "base"),
}


SMOKE = {  # a tiny random GPT-2 from configs/default.yaml, a few steps, fixers only
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "model.n_positions": 384,
    "model.generation.num_beams": 1, "model.generation.num_return_sequences": 1, "model.generation.max_new_tokens": 8,
    "data.max_length": 384, "data.vocab_size": 600, "data.revise.candidates": 0,
    "trainer.enable_model_summary": False,
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--smoke``'s sizes and ``--set``'s config keys (``override``) applied."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smollm2.yaml"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "constitution_effect"))
    parser.add_argument("--fraction", type=float, default=0.3, help="share of training outputs corrupted")
    parser.add_argument("--seed", type=int, default=0, help="which outputs are corrupted, and how")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps per arm, epochs ignored")
    parser.add_argument("--dpo-steps", type=int, default=20, help=f"optimizer steps of {DPO_ARM}'s DPO, after its SFT")
    parser.add_argument("--dpo-beta", type=float, default=0.1)
    parser.add_argument("--dpo-lr", type=float, default=5e-6, help=f"{DPO_ARM}'s DPO learning rate")
    parser.add_argument("--dpo-sft-weight", type=float, default=0.0, help=f"{DPO_ARM}'s SFT term (model.sft_weight)")
    parser.add_argument("--samples", type=int, default=5, help="samples per task (n of pass@k)")
    parser.add_argument("--greedy", action="store_true", help="one greedy sample per task instead (pass@1 only)")
    parser.add_argument("--humaneval-limit", type=int, default=164, help="HumanEval problems scored; 0: none")
    parser.add_argument("--eval-tokens", type=int, default=None, help="new tokens per sample (default: the config's)")
    parser.add_argument("--task-limit", type=int, default=None, help="held-out tasks scored (default: all)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: the config's")
    parser.add_argument("--cache-dir", default=None, help="default: the config's data.cache_dir")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--train-seeds", nargs="+", type=int, default=None, metavar="S",
                        help="train every fine-tuned arm once per seed (data.shuffle_seed and seed_everything; default: once, the config's)")
    parser.add_argument("--record", default=None,
                        help="the result file of every arm done in --out (default: bench/results/constitution_effect.json; "
                             "with --stage-only, constitution_effect-stage.json)")
    parser.add_argument("--stage-only", action="store_true", help="the constitution arms' stage only: data-level figures")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config keys for every arm, e.g. data.revise.principles=repair (values read as YAML)")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny random model, 2 steps, 4 tasks")
    args = parser.parse_args(argv)
    args.override = {}
    if args.smoke:
        args.config = str(ROOT / "configs" / "default.yaml") if args.config.endswith("smollm2.yaml") else args.config
        args.override = dict(SMOKE)
        args.max_steps, args.samples, args.humaneval_limit, args.task_limit, args.eval_tokens = 2, 2, 0, 4, 8
        args.dpo_steps = 2
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals or "." not in key:
            parser.error(f"--set {setting!r}: expected SECTION.KEY=VALUE, e.g. data.revise.principles=repair")
        args.override[key] = yaml.safe_load(value)
    return args


def main(argv: list[str] | None = None) -> dict:
    from cai_lightning.cli import resolved_config

    argv = sys.argv[1:] if argv is None else argv
    commit = harness.checkout_commit()  # the code this process runs, however long it runs
    args = parse(argv)
    out = Path(args.out)
    base = resolved_config(args.config)  # the config as the CLI reads it: includes and defaults applied
    split = split_settings(base["data"]["init_args"])
    # --smoke: a quarter of the tasks, so that its constitution stage checks ~110 rows, not 440
    corruption = write_sources(out, split, args.fraction, args.seed, every=4 if args.smoke else 1)
    kinds = Counter(entry["kind"] for entry in corruption["log"])
    print(f"corrupted {corruption['corrupted']} of {corruption['train_rows']} training outputs: {dict(kinds)}", flush=True)

    described = {"config": Path(args.config).name, "corrupted": corruption["corrupted"],
                 "train_rows": corruption["train_rows"], "kinds": dict(kinds.most_common())}
    if args.stage_only:
        figures = {}
        for arm in [a for a in args.arms if a in ("sft-constitution", NO_CRITIC_ARM)]:
            print(f"\n===== {arm}: the constitution stage only =====", flush=True)
            figures[arm] = run_stage_only(arm, arm_config(base, arm, args, out), out)
            (out / f"stage-{arm}.json").write_text(json.dumps(figures[arm], indent=1))
        stages = {arm: {"seconds": f["stage_seconds"], **f["stage"]} for arm, f in figures.items()}
        harness.record("constitution_effect", {**described, "stages": stages}, argv, smoke=args.smoke,
                       path=Path(args.record) if args.record else None, stem="constitution_effect-stage")
        print("\n" + report.constitution_effect_stage({**described, "stages": stages}))
        return figures
    runs = planned_runs(args.arms, args.train_seeds)
    for arm, seed in runs:
        name = run_name(arm, seed)
        done = out / name / "result.json"
        if done.exists():
            print(f"{name}: done before, reading {done}", flush=True)
            continue
        print(f"\n===== {name} =====", flush=True)
        result = run_arm(arm, arm_config(base, arm, args, out, seed), out, commit)
        done.write_text(json.dumps(result))
    # every run done in this folder, also by earlier invocations with other --arms (the same seeds)
    every = planned_runs(ARMS, args.train_seeds)
    results = {run_name(*r): json.loads((out / run_name(*r) / "result.json").read_text())
               for r in every if (out / run_name(*r) / "result.json").exists()}
    summary = {**described, **summarize(results, every)}
    harness.record("constitution_effect", summary, argv, smoke=args.smoke,
                   path=Path(args.record) if args.record else None)
    text = report.constitution_effect(summary)
    (out / "table.md").write_text(text + "\n")
    print("\n" + text)
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
