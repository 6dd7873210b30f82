"""Run folders, resuming, and the console: a command given a run's checkpoint writes into that run's folder
(events, config, predictions), a resumed fit keeps the run's config.yaml and restarts the LR schedule over
the added steps, and the console carries no adverts, no foreign deprecation warnings and no unmeasured FLOPs."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from cai_lightning.cli import ModelSummary, main, quiet_console
from cai_lightning.model import WarmupCosineLR
from conftest import TINY

DEFAULT = str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
RUN = Path("lightning_logs/default/version_0")


def _args(rows_file: Path, *extra: str) -> list[str]:
    # no constitution stage: it has its own tests, and is most of a tiny run's time
    return ["--config", DEFAULT, *TINY, f"--data.source={rows_file}", "--data.cache_dir=cache", "--data.constitution=null", *extra]


def _scalars(run: Path) -> dict[str, list[float]]:
    """The scalars of a run folder, all its event files in the order they were written: tag -> values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ---------------------------------------------------------------- the LR schedule across a resume
def _lrs(total: int, steps: int, state: dict | None = None, resume: str = "restart", peak: float = 1e-3):
    """LRs of ``steps`` optimizer steps of a WarmupCosineLR planned for ``total``, optionally resumed from
    ``state``, and its state after them."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=peak)
    scheduler = WarmupCosineLR(optimizer, total, warmup_fraction=0.25, min_ratio=0.1, resume=resume)
    if state is not None:
        optimizer.param_groups[0]["lr"] = 123.0  # what the optimizer's own state brings back: overridden
        scheduler.load_state_dict(dict(state))
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs, scheduler.state_dict()


def test_a_run_resumed_for_its_own_length_continues_its_schedule_exactly():
    uninterrupted, _ = _lrs(12, 12)
    first, state = _lrs(12, 5)
    for resume in ("restart", "continue"):
        rest, _ = _lrs(12, 7, state, resume)
        assert first + rest == pytest.approx(uninterrupted)


def test_a_longer_run_restarts_warmup_and_cosine_over_the_added_steps_or_continues_at_the_floor():
    first, state = _lrs(8, 8)
    assert state["start_step"] == 0 and state["total_steps"] == 8
    restarted, state = _lrs(16, 8, state, "restart")
    assert state["start_step"] == 8 and state["total_steps"] == 16  # recorded for the next resume
    assert restarted == pytest.approx(first)  # the same warmup + cosine again, over steps 8..15
    continued, _ = _lrs(16, 8, _lrs(8, 8)[1], "continue")
    assert continued == pytest.approx([1e-4] * 8)  # the checkpoint's schedule has ended: its floor
    # the resumed run's own peak counts (a changed model.learning_rate), not the checkpoint's
    assert _lrs(16, 1, _lrs(8, 8)[1], "restart", peak=2e-3)[0] == pytest.approx([2e-3 * 0.5])


def test_a_checkpoint_without_a_recorded_schedule_follows_this_runs():
    _, state = _lrs(8, 8)
    del state["start_step"], state["total_steps"]  # as saved by the plain LambdaLR before
    resumed, _ = _lrs(16, 8, state)
    assert resumed == pytest.approx(_lrs(16, 16)[0][8:])


# ---------------------------------------------------------------- the console
def test_quiet_console_drops_lightnings_advert_and_its_own_leafspec_warning_only():
    from lightning.pytorch.utilities._pytree import _tree_flatten
    from lightning.pytorch.utilities.rank_zero import rank_zero_info
    from torch.utils._pytree import LeafSpec

    quiet_console()
    quiet_console()  # idempotent
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    try:
        rank_zero_info("💡 Tip: try installing [litlogger] ...")
        rank_zero_info("GPU available: False, used: False")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["GPU available: False, used: False"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console()  # the filter goes in front of "always", as it does in front of pytest's
        _tree_flatten(1)  # Lightning's own use of LeafSpec: silenced
        assert caught == []
        LeafSpec()  # the same deprecation from anywhere else: still shown
    assert [w.category for w in caught] == [FutureWarning] and "LeafSpec" in str(caught[0].message)


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
@pytest.mark.parametrize("flops", [0, 1234])
def test_model_summary_shows_flops_only_when_they_were_counted(flops, rich, capsys, monkeypatch):
    monkeypatch.setattr("cai_lightning.cli.rich_installed", lambda: rich)
    data = [(" ", ["0"]), ("Name", ["model"]), ("Type", ["GPT2LMHeadModel"]), ("Params", ["3.8 M"]),
            ("Mode", ["train"]), ("FLOPs", ["1.2 K" if flops else "0"])]
    ModelSummary.summarize(data, 3_800_000, 3_800_000, 15.1, {"train": 67, "eval": 0}, total_flops=flops)
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel" in out and "3.8 M" in out and "Total params" in out
    assert ("FLOPs" in out) == bool(flops) and ("1.2 K" in out) == bool(flops)


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_resumed_fit_continues_in_its_run_keeps_its_config_and_restarts_the_lr(workdir, rows_file, capsys, recwarn):
    advert = logging.Handler()
    adverts: list[str] = []
    advert.emit = lambda record: adverts.append(record.getMessage())
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addHandler(advert)
    try:
        main(["fit", *_args(rows_file, "--trainer.max_epochs=1", "--trainer.log_every_n_steps=1",
                            "--trainer.enable_model_summary=true")])
    finally:
        logging.getLogger("lightning.pytorch.utilities.rank_zero").removeHandler(advert)
    out = capsys.readouterr().out
    assert "GPT2LMHeadModel" in out and "Total params" in out  # the summary is there...
    assert "FLOPs" not in out  # ...without FLOPs nobody counted
    assert any("GPU available" in m for m in adverts) and not any("💡" in m for m in adverts)
    assert not [w for w in recwarn if "LeafSpec" in str(w.message)]

    ckpt = RUN / "checkpoints" / "last.ckpt"
    first_steps = torch.load(ckpt, weights_only=False)["global_step"]
    [best] = (RUN / "checkpoints").glob("epoch=*.ckpt")  # the same state as last.ckpt after one epoch
    main(["fit", *_args(rows_file, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1"), f"--ckpt_path={best}"])
    assert sorted(p.name for p in (workdir / "lightning_logs/default").iterdir()) == ["version_0"]
    assert yaml.safe_load((RUN / "config.yaml").read_text())["trainer"]["max_epochs"] == 1  # how it started
    assert yaml.safe_load((RUN / "config-resume-1.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]

    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 2 * first_steps
    assert state["lr_schedulers"][0]["start_step"] == first_steps  # restarted where it resumed
    scalars = _scalars(workdir / RUN)
    assert "hp_metric" not in scalars
    lr = scalars["train/lr"]
    peak, floor = 1e-3, 1e-4  # configs/default.yaml: learning_rate, min_lr_ratio 0.1
    assert len(lr) == 2 * first_steps  # one curve, both runs, in the run's one folder
    after = lr[first_steps:]
    assert after[0] == pytest.approx(peak, rel=1e-6) and min(after) > floor  # not stuck at the floor
    assert "val/loss" in scalars and len(scalars["val/loss"]) == 2  # one per epoch, both in version_0


@pytest.mark.slow
def test_predict_and_validate_from_a_checkpoint_write_into_its_run(workdir, rows_file, recwarn):
    main(["fit", *_args(rows_file, "--trainer.max_epochs=1")])
    ckpt = RUN / "checkpoints" / "last.ckpt"
    events_before = set(RUN.glob("events.out.tfevents.*"))

    main(["predict", *_args(rows_file), "--ckpt_path=last"])
    main(["validate", *_args(rows_file), f"--ckpt_path={ckpt}"])
    # a checkpoint of another config's runs: its own run folder still, not one under this logger's name
    main(["validate", *_args(rows_file), f"--ckpt_path={ckpt}", "--trainer.logger.init_args.name=other"])

    assert sorted(p.name for p in Path("lightning_logs").iterdir()) == ["default"]
    assert sorted(p.name for p in Path("lightning_logs/default").iterdir()) == ["version_0"]
    lines = [json.loads(line) for line in (RUN / "predictions.jsonl").read_text().splitlines()]
    assert lines and all(len(item["completions"]) == 2 for item in lines)
    configs = sorted(p.name for p in RUN.glob("config*.yaml"))
    assert configs == ["config-predict-1.yaml", "config-validate-1.yaml", "config-validate-2.yaml", "config.yaml"]
    logger = yaml.safe_load((RUN / "config-validate-2.yaml").read_text())["trainer"]["logger"]["init_args"]
    assert (logger["name"], logger["version"]) == ("default", 0)  # the config as it ran: where it logged
    assert len(set(RUN.glob("events.out.tfevents.*")) - events_before) >= 2  # validate logged into the run
    assert len(_scalars(RUN)["val/loss"]) == 1 + 2  # fit's epoch, then each validate's
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]


def test_a_checkpoint_outside_a_run_folder_gets_a_new_run_folder(workdir, rows_file, monkeypatch):
    """Nothing to write beside: the logger's next version_N, as in plain Lightning (checked without training:
    only the resolution of the logger's folder)."""
    from cai_lightning.cli import CAILightningCLI

    loose = workdir / "model.ckpt"
    torch.save({}, loose)
    seen = {}
    monkeypatch.setattr(CAILightningCLI, "instantiate_classes", lambda self: seen.update(
        logger=self.config[self.subcommand].trainer.logger.init_args))
    monkeypatch.setattr(CAILightningCLI, "_run_subcommand", lambda self, subcommand: None)
    main(["validate", *_args(rows_file), f"--ckpt_path={loose}"])
    assert seen["logger"].version == 0 and seen["logger"].name == "default"  # the next free one, claimed


def test_the_config_not_the_checkpoint_decides_the_model_settings(workdir, monkeypatch):
    """An explicit checkpoint path, like ``last``, leaves the model settings of the config and the command line
    alone (Lightning 2.6 would merge the checkpoint's hyperparameters over them)."""
    from cai_lightning.cli import CAILightningCLI

    ckpt = workdir / "lightning_logs/default/version_3/checkpoints/last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"learning_rate": 0.5, "resume_schedule": "restart"}}, ckpt)
    seen = {}
    monkeypatch.setattr(CAILightningCLI, "instantiate_classes", lambda self: seen.update(config=self.config[self.subcommand]))
    monkeypatch.setattr(CAILightningCLI, "_run_subcommand", lambda self, subcommand: None)
    main(["fit", "--config", DEFAULT, f"--ckpt_path={ckpt}", "--model.resume_schedule=continue"])
    model = seen["config"].model.init_args
    assert (model.learning_rate, model.resume_schedule) == (0.001, "continue")  # configs/default.yaml, the flag
    assert seen["config"].trainer.logger.init_args.version == 3  # and the logger points at the checkpoint's run


def test_each_run_claims_its_folder_when_it_starts(tmp_path):
    """Two runs started together used to pick the same version_N (Lightning picks it when the logger first
    writes); the CLI now creates it before anything else runs, and mkdir gives a folder to one run only."""
    from types import SimpleNamespace

    from jsonargparse import Namespace

    from cai_lightning.cli import CAILightningCLI

    (tmp_path / "runs/version_0").mkdir(parents=True)
    (tmp_path / "runs/version_notes").mkdir()  # not a run number
    claimed = []
    for _ in range(2):
        trainer = SimpleNamespace(logger=Namespace(init_args=Namespace(save_dir=str(tmp_path), name="runs", version=None)))
        CAILightningCLI._reserve_run_folder(trainer)
        claimed.append(trainer.logger.init_args.version)
    assert claimed == [1, 2] and (tmp_path / "runs/version_1").is_dir() and (tmp_path / "runs/version_2").is_dir()
    resumed = SimpleNamespace(logger=Namespace(init_args=Namespace(save_dir=str(tmp_path), name="runs", version=0)))
    CAILightningCLI._reserve_run_folder(resumed)  # a version given (a resumed run): left as it is
    assert resumed.logger.init_args.version == 0 and not (tmp_path / "runs/version_3").exists()
