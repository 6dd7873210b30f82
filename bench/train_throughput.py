"""Training throughput: our ``fit`` against the Hugging Face ``Trainer``, side by side in one run.

    python bench/train_throughput.py [--config configs/default.yaml] [--steps N] [--repeats 3]
        [--rows ROW ...] [--accelerator cpu|cuda] [--spec-tflops F] [--smoke] [any CLI flag, e.g. --data.batch_size=8]

The model and the data module are built from the config by the project's own CLI parser (links, defaults,
class_path, the bf16 fallback), so the bench reads the recipe exactly as ``python -m cai_lightning fit``
does; extra ``--section.key=value`` flags are passed to that parser. Every row trains the same network (same
seed, same initial weights) on the same tokenized training split with the same batch size, collator
(``PadCollator``), AdamW settings (lr, betas, weight decay on 2-D weights only, ``torch.optim.AdamW`` with
``fused=True``: the Trainer's default ``adamw_torch_fused``, and what our module picks),
gradient clipping, warmup-cosine schedule and number of optimizer steps (default: one epoch). The network is
the same function with the same weights in every row, but the Trainer's rows run it as transformers builds it
(``nn.Dropout``, transformers' ``sdpa`` attention), ours as ``CodeLM.configure_model`` does (its CPU dropout and
attention, see cai_lightning/model.py), and our step applies the LM head to the positions with a label only:
those are our step's work, as the sampler and the loop are. Rows:

  hf-own-bf16      transformers.Trainer, its own sampler (``train_sampling_strategy="group_by_length"``,
                   what a user porting ``data.group_by_length: true`` sets; ``random`` when the config has
                   false), bf16 autocast
  hf-own-fp32      the same in fp32
  hf-ours-bf16     transformers.Trainer given our data module's training sampler (``_get_train_sampler``)
  hf-ours-fp32     the same in fp32
  ours-32-true     Lightning ``fit`` with our module and data module, fp32
  ours-bf16-mixed  the same with bf16 autocast (what configs/default.yaml runs)
  ours-bf16-mixed-compile
                   the same with ``--model.compile=true`` (``torch.compile`` of the training forward, dynamic
                   shapes); only when asked for in ``--rows``: on this 2-core CPU it runs at ~0.55x eager and its
                   compiles take minutes

bf16 rows (and the bf16 peak) are left out on a CPU without native bf16 (AVX512-BF16 or AMX), where the CLI
falls back to 32-true too: emulated bf16 matmuls run at a fraction of a GFLOP/s there.

The seed's "plain loop" row (every example padded to max_length, fp32, a hand-written loop) is gone: nobody
would pick it over this project, the Trainer is the baseline a user would pick, and padding to max_length
computes several times the positions of either, so it cost a repeat's time for a figure nobody needs.

Figures, each the median over ``--repeats`` (the rows run in a rotated order in every repeat, so a noisy
neighbour falls on all rows alike; range = min-max), after ``--warmup`` untimed runs of every row. The warm-up
is there because freed memory stays in the process: without it the first row of the first repeat alone pays
for growing the process to its peak, and on this 2-core VM a page touched for the first time costs ~10 µs
(``fill_`` of a fresh 1 GiB tensor 1-4 s, of a reused one 0.03 s), which made steps longer than any before
them take 1.2-1.6 s instead of ~0.3 s:

* target tok/s: tokens that carry a label, per second, timed from the end of the first optimizer step
  (start-up and first-step allocations excluded) to the end of the last;
* padding: padded positions / all positions of the batches;
* × HF own: throughput over ``hf-own`` of the same precision in the same repeat (paired), median and range;
* % peak: useful model FLOPs per second over this CPU's matmul peak in that dtype, measured in the same run
  (a square n=2048 matmul, timed for ``--peak-seconds``). Model FLOPs are the matmuls a step needs, counted
  as in PaLM's MFU (Chowdhery et al. 2022, app. B): 6·N per real (non-padding) token (N = weights of every
  Linear/Conv1D but the LM head, embedding lookups not counted), 6·N_head per token with a label (the head's
  logits elsewhere, on the prompt, are never used: our step does not compute them, the Trainer's does), plus
  12·L·d·ℓ² per sequence of ℓ tokens for attention (QKᵀ and AV, forward and backward, not halved for the
  causal mask). The same count for every row: rows compare as they would by tokens.

Every row runs with glibc's malloc keeping freed memory for reuse, as ``python -m cai_lightning`` sets it
(``cai_lightning.devices.keep_freed_memory``; ``--glibc-malloc`` leaves malloc as it is): the ratios compare
the steps, not the allocator.

``--accelerator cuda`` runs every row on the GPU (Lightning's ``cuda`` accelerator, the Trainer without
``use_cpu``), times a step's end after ``torch.cuda.synchronize()``, measures the peak with an n=8192 matmul, and
``--spec-tflops`` adds MFU against the GPU's nominal dense bf16 peak (989 for an H100/H200 SXM). A GPT-2-medium-
shaped network from the default recipe (random init, the shipped tasks without the constitution stage):

    python bench/train_throughput.py --accelerator cuda --spec-tflops 989 --steps 60 \
        --rows hf-own-bf16 hf-ours-bf16 ours-bf16-mixed ours-bf16-mixed-compile \
        --model.n_layer=24 --model.n_head=16 --model.n_embd=1024 --data.constitution=null

``--smoke`` runs every default row for 3 steps on a tiny model and raw data in a temporary cache (seconds; CI).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import lightning.pytorch as pl
import torch

from cai_lightning.data.tokenization import IGNORE_INDEX
from cai_lightning.devices import cpu_supports_bf16, keep_freed_memory, malloc_in_use
from cai_lightning.kernels import Dropout, replace_dropouts
from cai_lightning.model import CodeLM
from harness import SMOKE_MODEL, bare_trainer, checkout_commit, fresh_network, from_config, quiet, record

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("hf-own-bf16", "hf-own-fp32", "hf-ours-bf16", "hf-ours-fp32", "ours-32-true", "ours-bf16-mixed")
COMPILED = "ours-bf16-mixed-compile"  # a row only when --rows names it


# ---------------------------------------------------------------- building from the config


# ---------------------------------------------------------------- what a step did, and when
@dataclass
class Clock:
    """Per optimizer step: its end time and what its batches held (target tokens, positions, real tokens,
    useful model FLOPs, see the module docstring)."""

    n_matmul: int  # weights of every Linear/Conv1D but the LM head (the FLOPs of one token's forward are 2x this)
    n_head: int  # weights of the LM head, used at the positions with a label only
    attention: int  # 12 * n_layer * hidden size: one sequence's attention FLOPs per squared length
    synchronize: Callable[[], None] = lambda: None  # a step's end is when the device has finished it
    ends: list[float] = field(default_factory=list)
    steps: list[tuple[int, int, int, float]] = field(default_factory=list)
    _pending: list[int | float] = field(default_factory=lambda: [0, 0, 0, 0.0])

    @classmethod
    def for_model(cls, model: torch.nn.Module, accelerator: str) -> Clock:
        from transformers.pytorch_utils import Conv1D

        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D)))
        head = model.get_output_embeddings().weight.numel()
        config = model.config
        synchronize = torch.cuda.synchronize if accelerator == "cuda" else lambda: None
        return cls(weights - head, head, 12 * config.num_hidden_layers * config.hidden_size, synchronize)

    def batch(self, batch: dict[str, torch.Tensor]) -> None:
        lengths = batch["attention_mask"].sum(1).double()  # (B,) real tokens per sequence
        targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        flops = float(6 * self.n_matmul * lengths.sum() + 6 * self.n_head * targets + self.attention * (lengths**2).sum())
        pending = self._pending
        pending[0] += targets
        pending[1] += batch["input_ids"].numel()
        pending[2] += int(lengths.sum())
        pending[3] += flops

    def step_end(self) -> None:
        self.synchronize()
        self.ends.append(time.perf_counter())
        self.steps.append(tuple(self._pending))
        self._pending = [0, 0, 0, 0.0]

    def figures(self) -> dict:
        """Rates over steps 2..N (the first step's end starts the clock); padding over all steps."""
        if len(self.ends) < 2:
            raise RuntimeError(f"only {len(self.ends)} optimizer steps timed: run at least 2 (--steps)")
        seconds = self.ends[-1] - self.ends[0]
        timed = self.steps[1:]
        positions = sum(s[1] for s in self.steps)
        return {
            "steps": len(self.steps), "seconds": seconds,
            "target_tokens_per_s": sum(s[0] for s in timed) / seconds,
            "padding": 1 - sum(s[2] for s in self.steps) / positions,
            "flops_per_s": sum(s[3] for s in timed) / seconds,
        }


# ---------------------------------------------------------------- the rows


def run_ours(module: CodeLM, datamodule, trainer_config, steps: int, precision: str, accelerator: str) -> dict:
    """Lightning ``fit``, as the CLI runs it, minus validation, checkpoints, logging and progress bar."""
    clock = Clock.for_model(module.model, accelerator)

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.global_step = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.batch(batch)
            if trainer.global_step != self.global_step:  # an optimizer step ended with this batch
                self.global_step = trainer.global_step
                clock.step_end()

    trainer = bare_trainer(trainer_config, precision, [StepClock()], accelerator, max_steps=steps, max_epochs=-1)
    with contextlib.redirect_stdout(io.StringIO()):  # prepare_data's "Reusing cached tokenized dataset", per row
        trainer.fit(module, datamodule=datamodule)
    return clock.figures()


def as_transformers_builds_it(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with transformers' own dropout modules and ``sdpa`` attention in place of ``CodeLM``'s: the same
    function and weights, run as a user of the Trainer would run them."""
    replace_dropouts(model, Dropout, torch.nn.Dropout)
    model.set_attn_implementation("sdpa")
    return model


def run_hf(module: CodeLM, datamodule, trainer_config, steps: int, bf16: bool, our_sampler: bool, seed: int,
           accelerator: str) -> dict:
    """``transformers.Trainer`` with our settings; its own sampler, or our data module's."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    hp = module.hparams
    model = as_transformers_builds_it(module.model)
    loader = datamodule.train_dataloader()  # our dataset, collator and sampler, as Lightning gets them
    clock = Clock.for_model(module.model, accelerator)

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    class TimedTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return loader.sampler if our_sampler else super()._get_train_sampler(train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, use_cpu=accelerator == "cpu", bf16=bf16, seed=seed, data_seed=seed, max_steps=steps,
            per_device_train_batch_size=loader.batch_size,
            gradient_accumulation_steps=trainer_config.accumulate_grad_batches,
            train_sampling_strategy="group_by_length" if datamodule.hparams.group_by_length else "random",
            optim="adamw_torch_fused", learning_rate=hp.learning_rate, weight_decay=hp.weight_decay,
            adam_beta1=hp.betas[0], adam_beta2=hp.betas[1], max_grad_norm=trainer_config.gradient_clip_val or 0.0,
            lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": hp.min_lr_ratio},
            warmup_steps=math.ceil(hp.warmup_fraction * steps),
            logging_steps=trainer_config.log_every_n_steps, report_to="none", save_strategy="no",
            eval_strategy="no", disable_tqdm=True, dataloader_num_workers=loader.num_workers,
        )
        trainer = TimedTrainer(
            model=model, args=args, train_dataset=loader.dataset, data_collator=loader.collate_fn,
            callbacks=[StepEnd()],
        )
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dict, printed
        trainer.train()
    return clock.figures()


def run_row(name: str, config: Path, flags: list[str], datamodule, trainer_config, steps: int, seed: int,
            accelerator: str) -> dict:
    if name == COMPILED:
        flags = [*flags, "--model.compile=true"]
    module = fresh_network(config, flags, datamodule, seed)
    if name.startswith("ours-"):
        precision = name.removeprefix("ours-").removesuffix("-compile")
        figures = run_ours(module, datamodule, trainer_config, steps, precision, accelerator)
    else:
        figures = run_hf(module, datamodule, trainer_config, steps, name.endswith("bf16"), "-ours-" in name, seed,
                         accelerator)
    del module
    gc.collect()
    return figures


def matmul_peak(dtype: torch.dtype, seconds: float, n: int, accelerator: str = "cpu") -> float:
    """FLOP/s of a square n×n matmul in ``dtype`` on the device, repeated for ``seconds`` after a warm-up."""
    device = "cuda" if accelerator == "cuda" else "cpu"
    synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        a @ b
        synchronize()
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - start)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per row (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every row, in rotated order; medians reported")
    parser.add_argument("--rows", nargs="+", choices=[*ROWS, COMPILED], default=list(ROWS))
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu", help="where every row trains")
    parser.add_argument("--spec-tflops", type=float, default=None,
                        help="the device's nominal dense bf16 peak: adds MFU against it (bf16 rows)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of every row before the repeats (0 in --smoke): freed memory is kept, so "
                             "the process's memory grows once, to what the largest row needs, instead of in whichever "
                             "row runs first (a page touched for the first time is slow on a VM)")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="time each matmul-peak measurement runs")
    parser.add_argument("--peak-n", type=int, default=None,
                        help="size of the square matmul of the peak (default 2048 on the CPU, 8192 on a GPU)")
    parser.add_argument("--smoke", action="store_true", help="seconds: a tiny model, raw data, 3 steps, 1 repeat (CI)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="leave glibc's malloc as it is; by default every row keeps freed memory for reuse, as "
                             "`python -m cai_lightning` does (cai_lightning.devices.keep_freed_memory)")
    args, flags = parser.parse_known_args(argv)  # the rest goes to the project's CLI parser
    if args.accelerator == "cuda" and not torch.cuda.is_available():
        parser.error("--accelerator cuda: no CUDA device here")
    args.peak_n = args.peak_n or (8192 if args.accelerator == "cuda" else 2048)
    with tempfile.TemporaryDirectory() as cache, quiet():
        if args.smoke:
            flags = [*SMOKE_MODEL, f"--data.cache_dir={cache}", *flags]
            args.steps, args.repeats, args.peak_seconds, args.peak_n, args.warmup = args.steps or 3, 1, 0.05, 256, 0
        table = run(args, flags)
    record("train_throughput", table, argv, smoke=args.smoke)
    return table


def run(args: argparse.Namespace, flags: list[str]) -> list[dict]:
    kept = not args.glibc_malloc and keep_freed_memory()  # process-wide: every row alike
    _, datamodule, config = from_config(args.config, flags)
    seed = config.seed_everything if isinstance(config.seed_everything, int) else 0
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    steps = args.steps or math.ceil(batches / config.trainer.accumulate_grad_batches)
    on_gpu = args.accelerator == "cuda"
    bf16 = torch.cuda.is_bf16_supported() if on_gpu else cpu_supports_bf16()
    rows = [r for r in args.rows if bf16 or "bf16" not in r]
    if rows != args.rows:
        print(f"this {'GPU' if on_gpu else 'CPU'} has no native bf16: rows "
              f"{', '.join(r for r in args.rows if r not in rows)} left out")

    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32} if bf16 else {"fp32": torch.float32}
    peaks: dict[str, list[float]] = {key: [] for key in dtypes}
    results: dict[str, list[dict]] = {name: [] for name in rows}
    for warmup in range(args.warmup):
        for name in rows:
            r = run_row(name, args.config, flags, datamodule, config.trainer, steps, seed, args.accelerator)
            print(f"  warm-up {warmup + 1}/{args.warmup} {name:16s} {r['target_tokens_per_s']:8.0f} target tok/s (not counted)",
                  flush=True)
    for repeat in range(args.repeats):
        for key, dtype in dtypes.items():
            peaks[key].append(matmul_peak(dtype, args.peak_seconds, args.peak_n, args.accelerator))
        order = rows[repeat % len(rows):] + rows[: repeat % len(rows)]
        for name in order:
            results[name].append(run_row(name, args.config, flags, datamodule, config.trainer, steps, seed,
                                         args.accelerator))
            r = results[name][-1]
            print(f"  repeat {repeat + 1}/{args.repeats} {name:16s} {r['target_tokens_per_s']:8.0f} target tok/s", flush=True)
    peak = {key: statistics.median(values) for key, values in peaks.items()}

    model = fresh_network(args.config, flags, datamodule, seed).model
    print(
        f"\n{datetime.now():%Y-%m-%d %H:%M}, commit {checkout_commit()}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if on_gpu else f'{torch.get_num_threads()} threads'}; "
        f"{args.config.name} {' '.join(flags)}; {malloc_in_use(kept)}\n"
        f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
        f"{len(datamodule.splits['train'])} training examples, batch {datamodule.hparams.batch_size}, "
        f"{steps} optimizer steps per row, {args.warmup} untimed warm-up + {args.repeats} repeats (medians, range min-max)\n"
        f"matmul peak (n={args.peak_n}): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peak.items())
    )
    table = []
    for name in rows:
        rates = [r["target_tokens_per_s"] for r in results[name]]
        dtype = "fp32" if name.endswith(("fp32", "32-true")) else "bf16"
        # Paired: over hf-own of the same dtype in the same repeat, so drift between repeats cancels.
        base = results.get(f"hf-own-{dtype}")
        ratios = [mine / theirs["target_tokens_per_s"] for mine, theirs in zip(rates, base, strict=True)] if base else []
        table.append({
            "row": name, "dtype": dtype, "target_tokens_per_s": statistics.median(rates),
            "range": (min(rates), max(rates)), "padding": statistics.median(r["padding"] for r in results[name]),
            "vs_hf_own": statistics.median(ratios) if ratios else None,
            "vs_hf_own_range": (min(ratios), max(ratios)) if ratios else None,
            "flops_per_s": (flops := statistics.median(r["flops_per_s"] for r in results[name])),
            "peak_share": flops / peak[dtype],
            "spec_share": flops / (args.spec_tflops * 1e12) if args.spec_tflops and dtype == "bf16" else None,
            "seconds": statistics.median(r["seconds"] for r in results[name]),
        })
    spec = f" % of {args.spec_tflops:g} |" if args.spec_tflops else ""
    print(f"\n| {'row':23s} | dtype | target tok/s | {'range':13s} | padding | × HF own (range)   | % peak |{spec} timed s |")
    print(f"|{'-' * 25}|-------|-------------:|{'-' * 15}|--------:|{'-' * 20}|-------:|"
          f"{'-' * (len(spec) - 2) + ':|' if spec else ''}--------:|")
    for row in table:
        ratio = f"{row['vs_hf_own']:5.2f}× ({row['vs_hf_own_range'][0]:.2f}-{row['vs_hf_own_range'][1]:.2f})" if row["vs_hf_own"] else "-"
        low, high = row["range"]
        mfu = "" if not spec else f" {format(row['spec_share'], '.1%') if row['spec_share'] is not None else '-':>{len(spec) - 3}} |"
        print(
            f"| {row['row']:23s} | {row['dtype']:5s} | {row['target_tokens_per_s']:12.0f} | {low:6.0f}-{high:<6.0f} | "
            f"{row['padding']:7.1%} | {ratio:18s} | {row['peak_share']:6.1%} |{mfu} {row['seconds']:7.1f} |"
        )
    print("× HF own: median over repeats of the ratio to hf-own of the same dtype in the same repeat; % peak: useful "
          "model FLOP/s over the measured matmul peak of that dtype"
          + (f"; % of {args.spec_tflops:g}: the same over the nominal {args.spec_tflops:g} TFLOP/s (MFU)" if spec else "")
          + "; timed s: first to last optimizer step's end")
    return table


if __name__ == "__main__":
    main()
