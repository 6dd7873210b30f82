"""``python -m cai_lightning {fit,validate,test,predict} --config configs/X.yaml``.

LightningCLI owns configuration: every knob is a typed ``__init__`` argument of the model, the data
module or a callback, so ``--help`` and ``--print_config`` document it. The model and the data module are
chosen by the config: ``CodeLM`` and ``CodeInstructionDataModule`` (SFT) unless it names others with
``class_path`` (``configs/dpo.yaml``: ``PreferenceLM`` and ``PreferenceDataModule``). This subclass adds:

* ``model.pretrained`` is linked to ``data.tokenizer``: the tokenizer is named once.
* ``--ckpt_path last`` finds the newest ``last.ckpt`` of this logger's runs. With ``last`` or a path, the
  config and the command line decide the model's settings, not the checkpoint's saved hyperparameters.
* A command given a checkpoint of a run (``<run>/checkpoints/*.ckpt``, or ``last``) writes into that run's
  folder: a resumed ``fit`` continues its checkpoints, TensorBoard curves and export there (the trap of
  Lightning #16014), and ``validate``/``test``/``predict`` log and write their files (predictions.jsonl,
  execution_*.jsonl) beside the checkpoint they used. The config of each command is saved there without
  overwriting the run's ``config.yaml`` (:class:`SaveRunConfig`).
* ``bf16-mixed`` on a CPU without bf16 support falls back to ``32-true`` with a message.
* The console carries what this project says: no Lightning adverts, no deprecation warning about
  Lightning's own code, no FLOPs it did not measure (:func:`quiet_console`, :class:`ModelSummary`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from cai_lightning.callbacks import ConstitutionReport
from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.data.preference import PreferenceDataModule
from cai_lightning.devices import keep_freed_memory, training_precision
from cai_lightning.dpo import PreferenceLM
from cai_lightning.errors import ConfigError, UserError
from cai_lightning.model import CodeLM


class CAILightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({
            "model": {"class_path": f"{CodeLM.__module__}.{CodeLM.__name__}"},
            "data": {"class_path": f"{CodeInstructionDataModule.__module__}.{CodeInstructionDataModule.__name__}"},
        })
        parser.link_arguments("model.init_args.pretrained", "data.init_args.tokenizer")

    def _parse_ckpt_path(self) -> None:
        """Keep the model settings of the config and the command line when ``--ckpt_path`` is a file.

        Lightning 2.6 would merge the checkpoint's saved hyperparameters over them (before ``last`` is even
        resolved, so only for explicit paths): ``--model.resume_schedule`` or ``--model.generation.*`` given
        with a checkpoint path would be silently ignored (Lightning PR #21455, open). Here the config says
        what is built, for ``last`` and paths alike; a checkpoint of another network is refused by
        ``CodeLM.on_load_checkpoint`` with a message pointing at the run's ``config.yaml``."""

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        self._fall_back_from_cpu_bf16(config.trainer)
        if getattr(config, "ckpt_path", None) == "last":
            config.ckpt_path = str(self._last_checkpoint(config.trainer))
            print(f"Resuming from {config.ckpt_path}" if self.subcommand == "fit" else f"Using {config.ckpt_path}")
        if getattr(config, "ckpt_path", None) and Path(config.ckpt_path).exists():  # a sharded one is a folder
            self._log_into_the_checkpoints_run(config.trainer, Path(config.ckpt_path))
        self._reserve_run_folder(config.trainer)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if isinstance(self.datamodule, PreferenceDataModule) and not isinstance(self.model, PreferenceLM):
            raise ConfigError("data: PreferenceDataModule goes with model: class_path: cai_lightning.dpo.PreferenceLM")

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        # Lightning's own summaries (its default, or one named in the config) become ours, settings kept
        trainer.callbacks = [
            ModelSummary(cb._max_depth, **cb._summarize_kwargs) if type(cb) in (LightningModelSummary, RichModelSummary) else cb
            for cb in trainer.callbacks
        ]
        return trainer

    @staticmethod
    def _fall_back_from_cpu_bf16(trainer) -> None:
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        precision = training_precision(trainer.precision, torch.device("cpu" if on_cpu else "cuda"))
        if precision != str(trainer.precision):
            rank_zero_warn(f"this CPU has no native bf16 support: trainer.precision {trainer.precision} -> {precision}")
            trainer.precision = precision

    @staticmethod
    def _logger_args(trainer):
        """``init_args`` of the logger that names the run folder (the first), or ``None`` without one
        (``trainer.logger`` false, or true: Lightning's default logger, which the config does not describe)."""
        logger = trainer.logger
        if isinstance(logger, list):
            logger = logger[0] if logger else None
        return getattr(logger, "init_args", None)

    def _last_checkpoint(self, trainer) -> Path:
        """The newest ``<save_dir>/<name>/version_*/checkpoints/last.ckpt`` of the configured logger.

        The shipped configs save ``last.ckpt`` as a link to the checkpoint it names (``save_last: link``), which
        Lightning makes anew at every validation: the link's own time (``lstat``) says which run was written
        last, where the target's would say which run last improved. The path returned is the link's, so the
        command writes into the run folder holding it. A link whose checkpoint was deleted is a user error."""
        init = self._logger_args(trainer)
        root = Path(getattr(init, "save_dir", None) or trainer.default_root_dir or ".")
        name = getattr(init, "name", "lightning_logs")
        runs = root / name if name else root
        found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.lstat().st_mtime)
        if not found:
            raise UserError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints/; train first")
        if not found[-1].exists():
            raise UserError(
                f"--ckpt_path last: {found[-1]} links to {found[-1].readlink()}, which is gone; "
                "give the checkpoint to use with --ckpt_path PATH"
            )
        return found[-1]

    def _log_into_the_checkpoints_run(self, trainer, ckpt: Path) -> None:
        """Point the logger at the run folder holding ``ckpt`` (``<save_dir>/<name>/<version>/checkpoints/``),
        so that this command's events, config and files land beside it, and ModelCheckpoint finds the
        ``dirpath`` its state was saved with. A checkpoint outside a ``checkpoints/`` folder, or a config
        without a logger that takes a ``version``, gets a new run folder, as in plain Lightning."""
        init = self._logger_args(trainer)
        if ckpt.parent.name != "checkpoints" or init is None or "version" not in init:
            return
        run = ckpt.parent.parent
        save_dir, name = getattr(init, "save_dir", None) or ".", getattr(init, "name", None) or ""
        if Path(save_dir, name).resolve() != run.parent.resolve():  # a run of another config's logger
            save_dir, name = str(run.parent.parent), run.parent.name
            init.save_dir, init.name = save_dir, name
        # version_N as the number (how Lightning names it, and shows it as v_num); any other name as is
        init.version = int(run.name.removeprefix("version_")) if re.fullmatch(r"version_\d+", run.name) else run.name
        if self.subcommand == "fit":  # resuming into this checkpoints/ is the point, not a mistake to warn of
            checkpoints = os.path.join(save_dir, name, run.name, "checkpoints")  # as ModelCheckpoint joins it
            warnings.filterwarnings(
                "ignore", message=re.escape(f"Checkpoint directory {checkpoints} exists and is not empty."),
                category=UserWarning,
            )


    @staticmethod
    def _reserve_run_folder(trainer) -> None:
        """Claim this run's ``version_N`` folder now, by creating it (``mkdir`` either creates it or fails: two
        runs started together never get the same one), where Lightning would pick the next free number
        when the logger first writes, and two runs started together would both write into it. Done by
        the process of rank 0 alone (DDP's other ranks re-run this command line; the run folder is rank
        0's for all of them). A logger given a ``version`` (a resumed run) or none is left as it is."""
        init = CAILightningCLI._logger_args(trainer)
        if init is None or "version" not in init or init.version is not None or rank_zero_only.rank != 0:
            return
        runs = Path(getattr(init, "save_dir", None) or ".", getattr(init, "name", None) or "")
        runs.mkdir(parents=True, exist_ok=True)
        taken = [int(p.name.removeprefix("version_")) for p in runs.glob("version_*") if p.name[8:].isdigit()]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (runs / f"version_{version}").mkdir()
                break
            except FileExistsError:
                version += 1
        init.version = version


class SaveRunConfig(SaveConfigCallback):
    """Save each command's resolved config into its run folder, never over another's.

    The command that opens a run folder (a fresh ``fit``) writes ``config.yaml``; each later command writing
    into the same folder writes ``config-<what>-<n>.yaml`` beside it, ``<what>`` being ``resume`` (a ``fit``
    from the run's checkpoint), ``validate``, ``test`` or ``predict``, and ``n`` counting from 1. So
    ``config.yaml`` always says how the run was started, and a resume with more epochs is on record too.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            folder = Path(trainer.log_dir)  # on every rank: log_dir is a collective under DDP
            name = Path(self.config_filename)
            if trainer.is_global_zero and (folder / name).exists():  # only rank zero writes the file
                what = "resume" if stage == "fit" else getattr(stage, "value", stage)  # a TrainerFn, a str enum
                n = 1
                while (folder / f"{name.stem}-{what}-{n}{name.suffix}").exists():
                    n += 1
                self.config_filename = f"{name.stem}-{what}-{n}{name.suffix}"
        super().setup(trainer, pl_module, stage)


def rich_installed() -> bool:
    """Whether the ``rich`` package is there to draw the model summary as a table."""
    return importlib.util.find_spec("rich") is not None


class ModelSummary(LightningModelSummary):
    """Lightning's model summary (a rich table when rich is installed), without FLOPs it did not measure.

    Lightning counts FLOPs only by running the module's ``example_input_array``; without one (``CodeLM``
    has none: its batches have no fixed shape) its summary shows ``0`` for every layer and ``Total FLOPs: 0``,
    which reads as a measurement. Here the FLOPs column and total appear only when they were counted.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if total_flops or name != "FLOPs"]
        totals = {
            "Trainable params": get_human_readable_count(trainable_parameters),
            "Non-trainable params": get_human_readable_count(total_parameters - trainable_parameters),
            "Total params": get_human_readable_count(total_parameters),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        if total_flops:
            totals["Total FLOPs"] = get_human_readable_count(total_flops)
        rows = list(zip(*(values for _, values in columns)))
        if rich_installed():
            from rich import get_console
            from rich.table import Table

            table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
            for name, _ in columns:
                table.add_column(name, justify="right" if name in ("Params", "FLOPs") else "left")
            for row in rows:
                table.add_row(*map(str, row))
            get_console().print(table)
            get_console().print("\n".join(f"[bold]{key}[/]: {str(value).strip()}" for key, value in totals.items()))
        else:
            widths = [max(len(name), *(len(str(v)) for v in values)) for name, values in columns]
            lines = [" | ".join(f"{name:<{w}}" for (name, _), w in zip(columns, widths))]
            lines += [" | ".join(f"{v!s:<{w}}" for v, w in zip(row, widths)) for row in rows]
            print("\n".join(lines + [f"{str(value).strip():<10} {key}" for key, value in totals.items()]))


def quiet_console() -> None:
    """Keep the console to what this project says, dropping exactly two kinds of noise that are not ours.

    * Lightning's adverts (``💡 Tip: ... install litlogger / litmodels``), logged at INFO at the start of
      every run: filtered out by their prefix on the one logger that emits them.
    * torch's ``FutureWarning`` that ``LeafSpec`` is deprecated, raised by Lightning's own
      ``lightning.pytorch.utilities._pytree`` (Lightning #21326): ignored for that message, category and
      module only; the same deprecation raised from anywhere else still shows.

    Idempotent (``main`` calls it on every invocation).
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advert)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )


def _not_an_advert(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def main(args: list[str] | None = None) -> CAILightningCLI | None:
    """Entry point of ``python -m cai_lightning`` and the ``cai-lightning`` script; tests call it in-process.

    User errors (bad data, bad settings) are printed as one line and exit with status 2.
    """
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on CPU
    keep_freed_memory()  # a CPU step's large activations reused, not mapped and zero-filled afresh every step
    quiet_console()
    UserError.latest = None
    try:
        return _project_cli(CAILightningCLI, args, save_config_callback=SaveRunConfig)  # a run's config.yaml is never overwritten
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:  # jsonargparse's wrapping of a UserError raised while it built a class
        cause = UserError.latest
        if cause is None or str(cause) not in str(err):
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None


def _project_cli(cli_class: type[CAILightningCLI], args: list[str] | None, save_config_callback) -> CAILightningCLI:
    return cli_class(
        CodeLM,
        CodeInstructionDataModule,
        subclass_mode_model=True,  # a config may name a subclass (PreferenceLM) with class_path
        subclass_mode_data=True,
        args=args,
        save_config_callback=save_config_callback,
        auto_configure_optimizers=False,  # CodeLM.configure_optimizers owns AdamW and its schedule
        # on every trainer, whatever the config's list: the stage's summary in the logger (the DataModule only builds data)
        trainer_defaults={"callbacks": [ConstitutionReport()]},
    )


class _BuildOnly(CAILightningCLI):
    def fit(self, **kwargs) -> None:
        """Nothing: :func:`build` wants the classes, not the run."""


def build(args: list[str]) -> CAILightningCLI:
    """The model, data module and trainer of ``cai_lightning fit ARGS``, built exactly as that command builds
    them (the same parsing, bf16 fallback and links), with nothing run and no run folder or config written:
    what the benchmarks time their own loops on. Nothing is prepared either (``datamodule.prepare_data()``)."""
    return _project_cli(_BuildOnly, ["fit", *args, "--trainer.logger=false"], save_config_callback=None)


def resolved_config(path: str | os.PathLike, subcommand: str = "fit") -> dict:
    """The config file ``path`` as ``cai_lightning SUBCOMMAND --config PATH`` resolves it: its includes
    (``config: base.yaml``) and dotted keys applied, every default filled in, model and data as
    ``{class_path, init_args}``. Read a config with this, never with ``yaml.safe_load`` of the file (an overlay
    holds only what differs, and its includes are relative to its folder); the dict, dumped, is valid ``--config``
    input (the shape of a run's saved ``config.yaml``).

    It is the CLI's own ``--print_config``, run in-process: LightningCLI has no public way to parse without
    instantiating the classes (``run=False`` still builds them). Raises :class:`ConfigError` with the parser's
    message when the file does not parse."""
    out, err = io.StringIO(), io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([subcommand, "--config", str(path), "--print_config"])
    except SystemExit as exit_:
        code = exit_.code
    if code not in (0, None) or not out.getvalue().strip():
        printed = err.getvalue().strip()
        # jsonargparse prints the usage, then `error: ...`: the error is the message
        message = printed[printed.rfind("error: "):] if "error: " in printed else printed or f"exit status {code}"
        raise ConfigError(f"{path} does not parse as a `{subcommand}` config:\n{message}")
    sys.stderr.write(err.getvalue())  # the parser's warnings, if any, as the CLI would show them
    return yaml.safe_load(out.getvalue())


def set_dotted(config: dict, key: str, value) -> None:
    """Set a dotted key in a config :func:`resolved_config` returned. A section given as ``{class_path,
    init_args}`` (model, data, the logger) takes its keys under ``init_args``: ``model.dropout`` is
    ``model.init_args.dropout``; ``model.class_path`` and ``model.init_args.dropout`` are themselves."""
    parts = key.split(".")
    target = config
    for i, part in enumerate(parts):
        if isinstance(target, dict) and "class_path" in target and part not in ("class_path", "init_args"):
            target = target.setdefault("init_args", {})
        if i == len(parts) - 1:
            target[part] = value
        else:
            target = target.setdefault(part, {})
