"""AdamW's step on the default model's weights: the for-loop, multi-tensor (``foreach``) and fused kernels.

    python bench/optimizer_step.py [--config configs/default.yaml] [--steps 20] [--repeats 5] [--smoke]
        [any CLI flag, e.g. --model.n_embd=512]

The network is built from the config by the project's own CLI parser, as ``python -m cai_lightning fit``
builds it (``bench/train_throughput.py``'s ``fresh_network``: the tokenizer's vocabulary, the ``model.n_*``
settings), and its weights are split into AdamW's groups by ``CodeLM.parameter_groups`` (what
``configure_optimizers`` uses), with fixed random gradients. Each row is a ``torch.optim.AdamW`` with the
config's learning rate and betas; per repeat the rows run ``--steps`` steps each in a rotated order (a noisy
neighbour falls on all alike), after one untimed step that allocates the moment buffers. Figures: median ms
per step over repeats (range min-max), and the speed-up over ``foreach`` (PyTorch's default on CPU and
CUDA) paired by repeat. Every row starts from the same weights and gradients and must end with the same
weights as ``foreach`` (max abs difference printed; the bench fails past 1e-5): a faster kernel that
computed something else would not count.

``--smoke``: a one-layer model on the raw task set in a temporary cache, 2 steps, 2 repeats (seconds; CI).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness import SMOKE_MODEL, fresh_network, from_config, quiet, record

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def weights_and_settings(config: Path, flags: list[str]) -> tuple[list[list[torch.Tensor]], list[float], dict]:
    """The network's weights as ``CodeLM.parameter_groups`` groups them (copies), each group's weight decay, and
    AdamW's other settings from the config."""
    with quiet():
        _, datamodule, _ = from_config(config, flags)
        datamodule.prepare_data()
        datamodule.setup("fit")
        module = fresh_network(config, flags, datamodule, seed=0)
    groups = module.parameter_groups()
    hp = module.hparams
    return ([[p.detach().clone() for p in group["params"]] for group in groups],
            [group["weight_decay"] for group in groups], {"lr": hp.learning_rate, "betas": tuple(hp.betas)})


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args, flags = parser.parse_known_args(argv)  # the rest goes to the project's CLI parser
    steps, repeats = (2, 2) if args.smoke else (args.steps, args.repeats)
    with tempfile.TemporaryDirectory() as cache:
        if args.smoke:
            flags = [*SMOKE_MODEL, f"--data.cache_dir={cache}", *flags]
        start, decays, settings = weights_and_settings(args.config, flags)

    generator = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=generator) * 1e-2 for p in group] for group in start]
    state = {}  # row → (weights, optimizer)
    for kind in ROWS:
        weights = [[p.clone().requires_grad_(True) for p in group] for group in start]
        for w, g in zip(sum(weights, []), sum(grads, [])):
            w.grad = g.clone()
        groups = [{"params": group, "weight_decay": decay} for group, decay in zip(weights, decays)]
        state[kind] = (sum(weights, []), torch.optim.AdamW(groups, **settings, **ROWS[kind]))
        state[kind][1].step()  # the first step allocates the moment buffers: not timed

    times: dict[str, list[float]] = {kind: [] for kind in ROWS}
    names = list(ROWS)
    for repeat in range(repeats):
        for kind in names[repeat % len(names):] + names[: repeat % len(names)]:
            opt = state[kind][1]
            began = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[kind].append((time.perf_counter() - began) / steps * 1e3)

    reference = [w.detach() for w in state["foreach"][0]]
    rows = []
    for kind in ROWS:
        weights = [w.detach() for w in state[kind][0]]
        difference = max(float((a - b).abs().max()) for a, b in zip(weights, reference))
        if difference > 1e-5:
            raise SystemExit(f"{kind}: weights differ from foreach's by {difference:.2e} after {steps * repeats} steps")
        ratios = [f / k for f, k in zip(times["foreach"], times[kind])]
        rows.append({
            "row": kind, "ms_per_step": statistics.median(times[kind]), "min_ms": min(times[kind]),
            "max_ms": max(times[kind]), "vs_foreach": statistics.median(ratios), "vs_foreach_range": (min(ratios), max(ratios)),
            "max_abs_difference": difference,
        })

    parameters = sum(p.numel() for group in start for p in group)
    print(f"AdamW step on {parameters / 1e6:.2f} M parameters, {steps} steps × {repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"{'row':10s} {'ms/step':>20s} {'× foreach':>20s} {'max |Δw| vs foreach':>20s}")
    for row in rows:
        low, high = row["vs_foreach_range"]
        print(f"{row['row']:10s} {row['ms_per_step']:8.2f} ({row['min_ms']:.2f}–{row['max_ms']:.2f}) "
              f"{row['vs_foreach']:8.2f} ({low:.2f}–{high:.2f}) {row['max_abs_difference']:20.1e}")
    record("optimizer_step", rows, argv, smoke=args.smoke)
    return rows


if __name__ == "__main__":
    main()
