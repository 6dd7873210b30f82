"""AdamW's step on the default model's weights: the for-loop, multi-tensor (``foreach``) and fused kernels.

    python bench/optimizer_step.py [--config configs/default.yaml] [--steps 20] [--repeats 5] [--smoke]

The network is the config's from-scratch GPT-2 (``model.n_*``, ``data.vocab_size`` + the added ``[PAD]``),
its parameters split into decayed (2-D) and undecayed groups as ``CodeLM.configure_optimizers`` does, with
fixed random gradients. Each row is a ``torch.optim.AdamW`` with the config's settings; per repeat the rows
run ``--steps`` steps each in a rotated order (a noisy neighbour falls on all alike), after one untimed
step that allocates the moment buffers. Figures: median ms
per step over repeats (range min-max), and the speed-up over ``foreach`` (PyTorch's default on CPU and
CUDA) paired by repeat. Every row starts from the same weights and gradients and must end with the same
weights as ``foreach`` (max abs difference printed; the bench fails past 1e-5): a faster kernel that
computed something else would not count.

``--smoke``: a one-layer model, 2 steps, 2 repeats (seconds; CI).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def network(config: dict, smoke: bool) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = config["model"]
    shape = dict(n_layer=1, n_head=2, n_embd=32) if smoke else {k: model[k] for k in ("n_layer", "n_head", "n_embd")}
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(**shape, n_positions=model["n_positions"], vocab_size=config["data"]["vocab_size"] + 1,
                   bos_token_id=None, eos_token_id=None)
    )


def optimizer(weights: list[torch.Tensor], config: dict, kind: str) -> torch.optim.AdamW:
    model = config["model"]
    groups = [
        {"params": [p for p in weights if p.dim() >= 2], "weight_decay": model["weight_decay"]},
        {"params": [p for p in weights if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=model["learning_rate"], betas=tuple(model["betas"]), **ROWS[kind])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    steps, repeats = (2, 2) if args.smoke else (args.steps, args.repeats)
    config = yaml.safe_load(Path(args.config).read_text())

    start = [p.detach().clone() for p in network(config, args.smoke).parameters()]
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=generator) * 1e-2 for p in start]
    state = {}  # row → (weights, optimizer)
    for kind in ROWS:
        weights = [p.clone().requires_grad_(True) for p in start]
        for w, g in zip(weights, grads):
            w.grad = g.clone()
        state[kind] = (weights, optimizer(weights, config, kind))
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

    parameters = sum(p.numel() for p in start)
    print(f"AdamW step on {parameters / 1e6:.2f} M parameters, {steps} steps × {repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    print(f"{'row':10s} {'ms/step':>20s} {'× foreach':>20s} {'max |Δw| vs foreach':>20s}")
    for row in rows:
        low, high = row["vs_foreach_range"]
        print(f"{row['row']:10s} {row['ms_per_step']:8.2f} ({row['min_ms']:.2f}–{row['max_ms']:.2f}) "
              f"{row['vs_foreach']:8.2f} ({low:.2f}–{high:.2f}) {row['max_abs_difference']:20.1e}")
    return rows


if __name__ == "__main__":
    main()
