"""What the benchmarks share: the model and data built as the CLI builds them, a bare Trainer, the libraries'
chatter muted, and one result file per run under ``bench/results/`` that says what was measured, with which
command, on which machine and checkout, and when.

The scripts import it as a sibling (``import harness``): ``python bench/X.py`` puts ``bench/`` first on the
path, and pytest's ``pythonpath`` setting does the same for the tests.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# A 1-layer 32-wide GPT-2 on the raw shipped tasks (no constitution stage): a training bench's machinery in seconds.
SMOKE_MODEL = ["--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--data.batch_size=8",
               "--data.constitution=null"]


# ---------------------------------------------------------------- building from a config
def from_config(config: Path, flags: list[str]):
    """(model, data module, the parsed ``fit`` namespace), built exactly as ``cai_lightning fit`` builds them."""
    from cai_lightning.cli import build

    cli = build(["--config", str(config), *flags])
    return cli.model, cli.datamodule, cli.config.fit


def fresh_network(config: Path, flags: list[str], datamodule, seed: int):
    """A new ``CodeLM`` from the config with its network built: the same initial weights on every call."""
    with warnings.catch_warnings():  # the CLI's warnings (a bf16 fallback) were shown at the first parse
        warnings.simplefilter("ignore")
        module, _, _ = from_config(config, flags)
    module.connect(datamodule.tokenizer)
    torch.manual_seed(seed)
    module.configure_model()
    return module


def bare_trainer(trainer_config, precision: str, callbacks: list, accelerator: str = "cpu", **limits):
    """A one-device ``pl.Trainer`` that steps as the config's does (accumulation, clipping, logging cadence) and
    does nothing else: no validation, checkpoints, logger, progress bar or model summary. ``limits``:
    ``max_steps``, ``max_epochs``, ``limit_train_batches``."""
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator=accelerator, devices=1, precision=precision,
        accumulate_grad_batches=trainer_config.accumulate_grad_batches,
        gradient_clip_val=trainer_config.gradient_clip_val, log_every_n_steps=trainer_config.log_every_n_steps,
        limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **limits,
    )


@contextlib.contextmanager
def quiet():
    """The table, not the libraries' start-up chatter: Lightning's and transformers' info logs and their
    warnings are muted while the bench runs (ours are not), and restored after."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    loggers = {name: logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")}
    levels = {name: logger.level for name, logger in loggers.items()}
    transformers.logging.set_verbosity_error()
    for logger in loggers.values():
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(lightning|transformers|accelerate|torch)\b")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


# ---------------------------------------------------------------- where and when a figure was measured
def checkout_commit() -> str:
    """The short hash of this checkout's HEAD, with ``+`` when the working tree differs from it; ``?`` outside a
    git checkout (a bench runs from an exported tree too)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)

    head = git("rev-parse", "--short", "HEAD").stdout.strip()
    if not head:
        return "?"
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no").stdout.strip() else "")


# what a CPU's matmuls depend on: its vector width and whether bf16 (and int8) is native
CPU_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}


def machine() -> dict:
    """The hardware and software a figure depends on: CPU model, its matmul features (``CPU_FEATURES``) and
    cores, native bf16, the GPU if any, the thread count, Python and torch."""
    from cai_lightning.devices import cpu_supports_bf16

    fields: dict[str, str] = {}  # the first processor's "key: value" lines
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": cpu, "cpu_features": [name for flag, name in CPU_FEATURES.items() if flag in flags],
        "cores": os.cpu_count(), "cpu_bf16": cpu_supports_bf16(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(), "torch": torch.__version__,
    }


def record(name: str, results, argv: list[str] | None, smoke: bool = False, path: Path | None = None,
           stem: str | None = None) -> Path:
    """Write one run's ``results`` (rows or a mapping, as the bench returns them) to ``path`` (default
    ``bench/results/<stem>.json``, ``stem`` defaulting to ``name``) with the command that made them, the machine, the checkout and the date;
    the path written. A smoke run writes to a temporary folder instead, so that CI leaves the tracked
    results as they are."""
    argv = sys.argv[1:] if argv is None else argv
    if path is None:
        folder = Path(tempfile.mkdtemp(prefix=f"bench-{name}-")) if smoke else RESULTS
        path = folder / f"{stem or name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "bench": name, "command": shlex.join(["python", f"bench/{name}.py", *map(str, argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": checkout_commit(),
        "machine": machine(), "smoke": smoke, "results": results,
    }
    path.write_text(json.dumps(entry, indent=1, default=str) + "\n")
    print(f"results: {path}", flush=True)
    return path
