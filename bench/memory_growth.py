"""What memory new to the process costs a training run: our ``fit``, epoch by epoch, drawing new batches every
epoch against replaying the first epoch's, each arm in a fresh process.

    python bench/memory_growth.py [--config configs/default.yaml] [--epochs 6] [--repeats 2] [--glibc-malloc]
        [--smoke] [any CLI flag, e.g. --data.pad_to_multiple_of=32]

Arms, each run in its own Python process (so each starts with the heap empty), alternating over repeats:

  new     Lightning ``fit`` on the config's model and data, as ``python -m cai_lightning fit`` builds them (freed
          memory kept, as the CLI sets it), minus validation, checkpoints, logging and the other callbacks: the
          length-grouped sampler draws new batches every epoch, as in a real run
  replay  the same, with the sampler's epoch held at 0: every epoch replays the first epoch's batches, so after
          it no step asks for memory of a size the process has not already allocated and freed

Per epoch and arm (medians over repeats): target tok/s (tokens with a label per second), the process's resident
memory at the epoch's end, the minor page faults during the epoch, and the bytes held by live tensors. Both arms
do the same work per epoch, up to which examples share a batch (padding within 1-2 %), so after the first epoch
the gap between them is what first-touching memory costs (the heap growing, because every new batch has its own
length and label count and glibc's heap fragments); on a VM where a page new to the process is slow (a
hypervisor backs it on first touch) that gap is large. The last line is the paired ratio replay / new of the
epochs after the first, median and range over repeats.

``--glibc-malloc`` leaves glibc's malloc as it is in both arms (``cai_lightning.devices.keep_freed_memory`` not
called). ``--smoke``: a tiny model on the raw shipped tasks, 2 epochs of 4 batches, 1 repeat (CI).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import SMOKE_MODEL, bare_trainer, from_config, record
from report import memory_growth as table

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("new", "replay")


def resident_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def minor_faults() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])  # field 10, minflt


def live_tensor_mib() -> float:
    import torch

    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


def child(arm: str, config: Path, epochs: int, limit_batches: int | None, glibc_malloc: bool, flags: list[str]) -> dict:
    """One arm in this process: ``epochs`` epochs of ``fit``, one figure set per epoch."""
    import lightning.pytorch as pl

    from cai_lightning.data.collate import LengthGroupedSampler
    from cai_lightning.data.tokenization import IGNORE_INDEX
    from cai_lightning.devices import keep_freed_memory

    kept = not glibc_malloc and keep_freed_memory()
    module, datamodule, parsed = from_config(config, flags)
    trainer_config = parsed.trainer
    if not datamodule.hparams.group_by_length:
        raise SystemExit("memory_growth.py needs data.group_by_length: true (the replay arm holds its sampler's epoch)")
    if arm == "replay":
        LengthGroupedSampler.set_epoch = lambda self, epoch: None  # this process only: every epoch is epoch 0

    class EpochClock(pl.Callback):
        def __init__(self) -> None:
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.targets, self.shapes = 0, []
            self.faults, self.start = minor_faults(), time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.targets += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            self.shapes.append(list(batch["input_ids"].shape))

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seconds, faults = time.perf_counter() - self.start, minor_faults() - self.faults
            self.epochs.append({
                "seconds": seconds, "target_tokens_per_s": self.targets / seconds, "resident_mib": resident_mib(),
                "minor_faults": faults, "live_tensor_mib": live_tensor_mib(), "shapes": self.shapes,
            })

    clock = EpochClock()
    trainer = bare_trainer(trainer_config, trainer_config.precision, [clock], max_epochs=epochs,
                           limit_train_batches=limit_batches)
    trainer.fit(module, datamodule=datamodule)
    return {"arm": arm, "kept": kept, "precision": str(trainer_config.precision), "epochs": clock.epochs}


def run_arm(arm: str, args: argparse.Namespace, flags: list[str], out: Path) -> dict:
    """``arm`` in a fresh Python process; its figures."""
    command = [sys.executable, __file__, "--child", arm, "--json", str(out), "--config", str(args.config),
               "--epochs", str(args.epochs), *(["--glibc-malloc"] if args.glibc_malloc else []),
               *(["--limit-batches", str(args.limit_batches)] if args.limit_batches else []), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"arm {arm} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="runs of both arms, alternating; medians reported")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches an epoch (default: all)")
    parser.add_argument("--glibc-malloc", action="store_true", help="leave glibc's malloc as it is in both arms")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds an arm's process may run")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, raw data, 2 epochs of 4 batches (CI)")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)  # run one arm here, write --json
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args, flags = parser.parse_known_args(argv)  # the rest goes to the project's CLI parser
    if args.child:
        figures = child(args.child, args.config, args.epochs, args.limit_batches, args.glibc_malloc, flags)
        args.json.write_text(json.dumps(figures))
        return {}
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the arms differ from the second epoch on")
    with tempfile.TemporaryDirectory() as scratch:
        if args.smoke:
            flags = [*SMOKE_MODEL, f"--data.cache_dir={scratch}/cache", *flags]
            args.epochs, args.repeats, args.limit_batches, args.timeout = 2, 1, 4, 300
        results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        for repeat in range(args.repeats):
            for arm in ARMS[repeat % 2:] + ARMS[: repeat % 2]:
                results[arm].append(run_arm(arm, args, flags, Path(scratch) / f"{arm}-{repeat}.json"))
                rates = " ".join(f"{e['target_tokens_per_s']:.0f}" for e in results[arm][-1]["epochs"])
                print(f"  repeat {repeat + 1}/{args.repeats} {arm:6s} target tok/s by epoch: {rates}", flush=True)
    report(args, flags, results)
    record("memory_growth", results, argv, smoke=args.smoke)
    return results


def report(args: argparse.Namespace, flags: list[str], results: dict[str, list[dict]]) -> None:
    """The run's setting in a line, then the table the docs quote (``bench/report.py``'s, from the same figures)."""
    from cai_lightning.devices import malloc_in_use

    first = results["new"][0]
    print(f"\n{args.config.name} {' '.join(flags)}; {first['precision']}; {malloc_in_use(first['kept'])}; "
          f"{args.epochs} epochs, {args.repeats} repeats\n")
    print(table(results))


if __name__ == "__main__":
    main()
