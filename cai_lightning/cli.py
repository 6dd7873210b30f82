"""``python -m cai_lightning {fit,validate,test,predict} --config configs/X.yaml``.

LightningCLI owns configuration: every knob is a typed ``__init__`` argument of the model, the data
module or a callback, so ``--help`` and ``--print_config`` document it. The model and the data module are
chosen by the config: ``CodeLM`` and ``CodeInstructionDataModule`` (SFT) unless it names others with
``class_path`` (``configs/dpo.yaml``: ``PreferenceLM`` and ``PreferenceDataModule``). This subclass adds:

* ``model.pretrained`` is linked to ``data.tokenizer``: the tokenizer is named once.
* ``--ckpt_path last`` finds the newest ``last.ckpt`` of this logger's runs; ``fit`` then resumes in that
  run's own log folder, so its TensorBoard curves continue (the trap of Lightning #16014).
* ``bf16-mixed`` on a CPU without bf16 support falls back to ``32-true`` with a message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.devices import cpu_supports_bf16
from cai_lightning.errors import UserError
from cai_lightning.model import CodeLM


class CAILightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({
            "model": {"class_path": f"{CodeLM.__module__}.{CodeLM.__name__}"},
            "data": {"class_path": f"{CodeInstructionDataModule.__module__}.{CodeInstructionDataModule.__name__}"},
        })
        parser.link_arguments("model.init_args.pretrained", "data.init_args.tokenizer")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        self._fall_back_from_cpu_bf16(config.trainer)
        if getattr(config, "ckpt_path", None) == "last":
            self._resolve_last_checkpoint(config)

    @staticmethod
    def _fall_back_from_cpu_bf16(trainer) -> None:
        on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())
        if str(trainer.precision) == "bf16-mixed" and on_cpu and not cpu_supports_bf16():
            rank_zero_warn("this CPU has no native bf16 support: trainer.precision bf16-mixed -> 32-true")
            trainer.precision = "32-true"

    def _resolve_last_checkpoint(self, config) -> None:
        logger = config.trainer.logger
        init = getattr(logger, "init_args", None)
        root = Path(getattr(init, "save_dir", None) or config.trainer.default_root_dir or ".")
        runs = root / (getattr(init, "name", None) or "lightning_logs")
        found = sorted(runs.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise UserError(f"--ckpt_path last: no last.ckpt under {runs}/version_*/checkpoints/; train first")
        config.ckpt_path = str(found[-1])
        version = found[-1].parent.parent.name.removeprefix("version_")
        if self.subcommand == "fit" and init is not None and version.isdigit():
            init.version = int(version)  # resume in the same log folder
        print(f"Resuming from {config.ckpt_path}" if self.subcommand == "fit" else f"Using {config.ckpt_path}")


def main(args: list[str] | None = None) -> CAILightningCLI | None:
    """Entry point of ``python -m cai_lightning`` and the ``cai-lightning`` script; tests call it in-process.

    User errors (bad data, bad settings) are printed as one line and exit with status 2.
    """
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere+ GPUs; no effect on CPU
    UserError.latest = None
    try:
        return CAILightningCLI(
            CodeLM,
            CodeInstructionDataModule,
            subclass_mode_model=True,  # a config may name a subclass (PreferenceLM) with class_path
            subclass_mode_data=True,
            args=args,
            save_config_kwargs={"overwrite": True},  # resuming writes config.yaml into the same folder
            auto_configure_optimizers=False,  # CodeLM.configure_optimizers owns AdamW and its schedule
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as err:  # jsonargparse's wrapping of a UserError raised while it built a class
        cause = UserError.latest
        if cause is None or str(cause) not in str(err):
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(2) from None
