"""Recipe choices side by side: validation loss, execution metrics and wall-clock time per arm, over seeds.

    python bench/recipe_compare.py [--study dropout|grouping|all] [--arm NAME:key=value,key=value ...]
        [--config configs/default.yaml] [--seeds 0 1] [--budget-arm NAME] [--out bench/results/recipe]
        [--smoke]

An arm is the config with dotted overrides (``model.attention_dropout=0.2``, ``trainer.max_epochs=19``;
values are read as YAML; ``default:`` is the config as it is). Every arm trains with ``fit`` from the same
config, then ``test`` runs on its best checkpoint (lowest ``val/loss``), through the project's CLI in this
process. Seed ``s`` sets ``seed_everything`` (initial weights, dropout masks) and ``data.shuffle_seed``
(training order); the splits never change, so every arm is scored on the same validation and test tasks.
Within a seed the arms run in a rotated order, so a noisy neighbour on a shared machine falls on all arms
alike over the seeds. Beam-searched samples are left out of the runs (the same cost for every arm).

Studies:

  dropout   attention dropout 0.2 (the unfused math path) against 0 (the fused kernel, the default), with the
            same residual dropout, for the same epochs; and the default given more epochs, about as many as
            fit in the unfused arm's time (``--fused-epochs``)
  grouping  ``data.length_group_size`` 128 (the default), 64 and 352 (more than the 344 training examples:
            one sort of the whole set, the same batches every epoch), with ``data.group_by_length: false``
            (uniform shuffling) as the reference, and shuffled for fewer epochs, about as many as fit in
            the default's time (``--shuffled-epochs``)

``--study all`` runs both; an arm named in both runs once.

Figures per arm, each the median over seeds (range = min-max):

* best val/loss and its epoch (from 1); val/loss at the budget: the best val/loss an arm had reached within the
  ``--budget-arm``'s fit time of the same seed (equal wall-clock);
* fit s: the ``fit`` call's wall-clock time; s/epoch: the median time between two validations (a noisy
  neighbour's burst moves it less than the total); × time: s/epoch × epochs over the first arm's, paired by
  seed;
* padding: padded positions / all positions of the training batches (one epoch of the arm's sampler);
* pass@1, pass@5, syntax-valid: ``ExecutionEval`` on the held-out test tasks (the config's sampling).

Each run writes ``<out>/<arm>/seed<s>/result.json`` when done and is skipped on a re-run, so a killed sweep
resumes: run it in the background (``nohup python bench/recipe_compare.py > sweep.log 2>&1 &``); ``--report``
tabulates the runs done so far and runs nothing. The table is printed and written to ``<out>/table.md``.
``--smoke`` runs two arms of a one-layer model for one epoch on the raw tasks (a temporary folder unless
``--out``; seconds; CI); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {
    "dropout": lambda args: [
        "attn-0.2:model.attention_dropout=0.2",
        "default:",  # attention dropout 0, data.length_group_size 128
        f"default-{args.fused_epochs}ep:trainer.max_epochs={args.fused_epochs}",
    ],
    "grouping": lambda args: [
        "default:",
        "group-64:data.length_group_size=64",
        "group-352:data.length_group_size=352",
        "shuffled:data.group_by_length=false",
        f"shuffled-{args.shuffled_epochs}ep:data.group_by_length=false,trainer.max_epochs={args.shuffled_epochs}",
    ],
}
SMOKE = {
    "model.n_layer": 1, "model.n_head": 2, "model.n_embd": 32, "trainer.max_epochs": 1, "data.batch_size": 8,
    "data.constitution": None, "trainer.limit_train_batches": 4,
}


def parse_arm(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` → (name, {dotted key: YAML value})."""
    name, colon, overrides = text.partition(":")
    if not name or not colon:
        raise SystemExit(f"an arm is NAME:[key=value,key=value...] (nothing after the colon: the config as is), got {text!r}")
    parsed = {}
    for item in filter(None, overrides.split(",")):
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"arm {name}: {item!r} is not section.key=value")
        parsed[key.strip()] = yaml.safe_load(value)
    return name, parsed


def run_config(base: dict, overrides: dict, seed: int, folder: Path, smoke: bool) -> Path:
    """The arm's config for one seed, with the run's logs inside ``folder``; its path. ``base`` is resolved
    (:func:`cai_lightning.cli.resolved_config`), and so is the config written: valid ``--config`` input."""
    from cai_lightning.cli import set_dotted

    config = copy.deepcopy(base)
    config["seed_everything"] = seed
    config["data"]["init_args"]["shuffle_seed"] = seed
    config["trainer"]["logger"]["init_args"].update(save_dir=str(folder), name="run")
    for key, value in {**(SMOKE if smoke else {}), **overrides}.items():
        set_dotted(config, key, value)
    # Beam-searched samples cost every arm the same time and say nothing a table can compare: left out.
    callbacks = [c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("BeamSearchSamples")]
    for callback in callbacks:
        if smoke and callback["class_path"].endswith("ExecutionEval"):
            callback["init_args"]["generation"]["max_new_tokens"] = 16
            callback["init_args"]["limit"] = 4
    config["trainer"]["callbacks"] = callbacks
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def val_curve(log_dir: Path) -> list[tuple[float, int, float]]:
    """(wall time, epoch, val/loss) of every validation of the run, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    losses = events.Scalars("val/loss")
    epochs = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
    return [(e.wall_time, epochs.get(e.step, i), e.value) for i, e in enumerate(losses)]


def padding_share(datamodule) -> float:
    """Padded positions / all positions over one epoch of the training loader's batches."""
    loader = datamodule.train_dataloader()
    padded = total = 0
    for batch in loader:
        mask = batch["attention_mask"]
        padded += int((mask == 0).sum())
        total += mask.numel()
    return padded / max(1, total)


def prepare(config: Path) -> None:
    """Build (or reuse) the config's cached dataset before any run is timed."""
    from cai_lightning.cli import build

    build(["--config", str(config)]).datamodule.prepare_data()


def run_one(config: Path, folder: Path) -> dict:
    """fit, then test on the best checkpoint; the run's figures."""
    from cai_lightning.callbacks import ExecutionEval
    from cai_lightning.cli import main

    started = time.time()
    cli = main(["fit", "--config", str(config)])
    fit_seconds = time.time() - started
    log_dir = Path(cli.trainer.log_dir)
    best = cli.trainer.checkpoint_callback.best_model_path
    result = {
        "fit_seconds": round(fit_seconds, 1),
        "optimizer_steps": cli.trainer.global_step,
        "epochs": cli.trainer.current_epoch,
        "padding": round(padding_share(cli.datamodule), 4),
        "best_checkpoint": str(Path(best).relative_to(folder)) if best else None,
        # seconds since fit started, epoch, val/loss
        "val_curve": [[round(t - started, 1), epoch, round(loss, 5)] for t, epoch, loss in val_curve(log_dir)],
    }
    del cli
    gc.collect()
    cli = main(["test", "--config", str(config), "--ckpt_path", best or "last"])
    [evaluator] = [c for c in cli.trainer.callbacks if isinstance(c, ExecutionEval)]
    result["test"] = {suite: report.metrics for suite, report in evaluator.reports.items()}
    result["test_loss"] = float(cli.trainer.callback_metrics["test/loss"]) if "test/loss" in cli.trainer.callback_metrics else None
    del cli
    gc.collect()
    return result


def summarise(arms: list[str], results: dict[tuple[str, int], dict], seeds: list[int], budget_arm: str) -> str:
    """The markdown table of medians over seeds."""

    def med(values):
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        m = statistics.median(values)
        span = f" ({min(values):.4g}–{max(values):.4g})" if len(values) > 1 else ""
        return f"{m:.4g}{span}"

    def epoch_seconds(result: dict) -> float:
        """Median wall-clock time between validations: a neighbour's burst moves it less than the total."""
        times = [0.0] + [c[0] for c in result["val_curve"]]
        return statistics.median(b - a for a, b in itertools.pairwise(times))

    rows = ["| arm | seeds | epochs | fit s | s/epoch | × time | padding | best val/loss (epoch) | val/loss at budget | test loss | pass@1 | pass@5 | syntax-valid |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = {s: results[(arm, s)] for s in seeds if (arm, s) in results}
        if not runs:
            continue
        best, best_epoch, at_budget, ratio = [], [], [], []
        for seed, r in runs.items():
            curve = r["val_curve"]
            _, epoch, loss = min(curve, key=lambda c: c[2])
            best.append(loss)
            best_epoch.append(epoch + 1)  # counted from 1, as max_epochs is
            budget = results.get((budget_arm, seed), {}).get("fit_seconds")
            if budget is not None:
                within = [c[2] for c in curve if c[0] <= budget]
                at_budget.append(min(within) if within else None)
            first = results.get((arms[0], seed))
            if first:
                ratio.append(epoch_seconds(r) * len(r["val_curve"]) / (epoch_seconds(first) * len(first["val_curve"])))
        suite = [next(iter(r["test"].values()), {}) for r in runs.values()]
        rows.append(
            f"| {arm} | {len(runs)} | {med([r['epochs'] for r in runs.values()])} | {med([r['fit_seconds'] for r in runs.values()])} "
            f"| {med([epoch_seconds(r) for r in runs.values()])} | {med(ratio)} | {med([r['padding'] for r in runs.values()])} | {med(best)} ({med(best_epoch)}) | {med(at_budget)} "
            f"| {med([r.get('test_loss') for r in runs.values()])} | {med([s.get('pass@1') for s in suite])} "
            f"| {med([s.get('pass@5') for s in suite])} | {med([s.get('syntax_valid') for s in suite])} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[tuple[str, int], dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--study", choices=[*STUDIES, "all"], default=None)
    parser.add_argument("--arm", action="append", default=[], help="NAME:key=value[,key=value...] (repeatable)")
    parser.add_argument("--fused-epochs", type=int, default=19, help="epochs of the dropout study's longer fused arm")
    parser.add_argument("--shuffled-epochs", type=int, default=10, help="epochs of the grouping study's shorter shuffled arm")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget-arm", default=None, help="equal wall-clock reference (default: the first arm)")
    parser.add_argument("--out", default=None, help="default: bench/results/recipe (--smoke: a temporary folder)")
    parser.add_argument("--report", action="store_true", help="only tabulate the runs already done (a sweep in progress)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)

    specs = list(args.arm)
    for study in ([*STUDIES] if args.study == "all" else [args.study] if args.study else []):
        specs += STUDIES[study](args)
    if args.smoke and not specs:
        specs = ["a:model.dropout=0.1", "b:model.attention_dropout=0.1"]
    if not specs:
        parser.error("give --study or --arm")
    arms = dict(parse_arm(s) for s in specs)
    names = list(arms)
    budget_arm = args.budget_arm or names[0]
    seeds = args.seeds[:1] if args.smoke else args.seeds

    temporary = tempfile.TemporaryDirectory() if args.smoke and not args.out else None
    out = Path(temporary.name if temporary else args.out or ROOT / "bench" / "results" / "recipe")
    from cai_lightning.cli import resolved_config

    base = resolved_config(args.config)  # the config as the CLI reads it: includes and defaults applied
    if args.smoke:
        base["data"]["init_args"]["cache_dir"] = str(out / "cache")

    results: dict[tuple[str, int], dict] = {}
    try:
        if not args.report:
            prepare(run_config(base, {}, seeds[0], out / "_prepare", args.smoke))
        for i, seed in enumerate(seeds):
            order = names[i % len(names):] + names[: i % len(names)]  # rotated per seed
            for arm in order:
                folder = out / arm / f"seed{seed}"
                done = folder / "result.json"
                if done.exists():
                    results[(arm, seed)] = json.loads(done.read_text())
                    continue
                if args.report:
                    continue
                print(f"[recipe_compare] {arm} seed {seed}: fit + test", flush=True)
                result = run_one(run_config(base, arms[arm], seed, folder, args.smoke), folder)
                result.update(arm=arm, seed=seed, overrides=arms[arm])
                done.write_text(json.dumps(result, indent=1))
                results[(arm, seed)] = result
                print(f"[recipe_compare] {arm} seed {seed}: {result['fit_seconds']} s, best val/loss "
                      f"{min(c[2] for c in result['val_curve']):.4f}", flush=True)
        table = summarise(names, results, seeds, budget_arm)
        header = f"config {args.config}, seeds {seeds}, budget arm {budget_arm}\n\n"
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(header + table + "\n")
        print(header + table)
        return results
    finally:
        if temporary:
            temporary.cleanup()


if __name__ == "__main__":
    main()
