"""DPO step cost: cached reference log-probs (``model.reference: cached``, the default) against a live frozen
reference model (``live``, what TRL does without precomputation), same model, pairs and steps, side by side.

    python bench/dpo_step.py [--size gpt2|tiny] [--pairs 32] [--steps 8] [--batch 4] [--smoke]

Pairs: the task set's reference solutions as chosen, the same code with its last line dropped as rejected.
The model is a randomly initialised GPT-2 of ``--size`` (no download). Each mode runs in a fresh process, so
its peak memory (max RSS; on a GPU, peak allocated) is its own. Columns: ``reference s`` is the one-time
pass that computes the cached log-probs (0 for live), ``pairs/s`` the training steps' throughput after one
warm-up step, ``peak MiB`` the process's peak. Both modes run in bf16 autocast where the device has native bf16
(a GPU, a CPU with AVX512-BF16 or AMX), else in fp32, as the CLI falls back (``bf16-mixed`` → ``32-true``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness import record

SIZES = {"gpt2": dict(n_layer=12, n_head=12, n_embd=768), "tiny": dict(n_layer=2, n_head=2, n_embd=64)}
TASKS = Path(__file__).resolve().parents[1] / "cai_lightning" / "tasks"


def make_model(folder: Path, size: str) -> None:
    """A random GPT-2 of ``size`` with the GPT-2-style BPE trained on the task set, saved as a folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from cai_lightning.data.tokenization import save_and_reload, train_bpe_tokenizer

    texts = [json.loads(line)["output"] for path in TASKS.glob("*.jsonl") for line in path.read_text().splitlines()]
    tokenizer = save_and_reload(train_bpe_tokenizer(texts, 2048), folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **SIZES[size])
    GPT2LMHeadModel(config).save_pretrained(folder)


def pairs(n: int) -> list[dict]:
    rows = [json.loads(line) for path in sorted(TASKS.glob("*.jsonl")) for line in path.read_text().splitlines()]
    out = []
    for row in rows[:n]:
        code = row["output"].rstrip("\n").split("\n")
        out.append({"prompt": row["instruction"] + "\n", "chosen": row["output"], "rejected": "\n".join(code[:-1]) + "\n"})
    return out


def precision(device: torch.device) -> str:
    """``bf16-mixed`` where ``device`` has native bf16, else ``32-true`` (emulated bf16 would time the emulation)."""
    from cai_lightning.devices import inference_dtype

    return "bf16-mixed" if inference_dtype(device) == torch.bfloat16 else "32-true"


def run_mode(folder: str, mode: str, n_pairs: int, steps: int, batch: int) -> dict:
    """One mode, in this process: the reference pass (cached), then timed training steps."""
    from cai_lightning.data.preference import PairCollator, tokenize_pairs
    from cai_lightning.data.tokenization import load_pretrained_tokenizer
    from cai_lightning.dpo import PreferenceLM, reference_logps

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mixed = precision(device)
    tokenizer = load_pretrained_tokenizer(folder)
    examples, _, _ = tokenize_pairs(pairs(n_pairs), tokenizer, max_length=384)
    reference_s = 0.0
    if mode == "cached":
        start = time.perf_counter()
        logps = reference_logps(examples, folder, tokenizer, device, mixed, batch)
        reference_s = time.perf_counter() - start
        for example, (chosen, rejected) in zip(examples, logps):
            example["reference_chosen"], example["reference_rejected"] = chosen, rejected
    module = PreferenceLM(pretrained=folder, reference=mode)
    module.connect(tokenizer)
    module.configure_model()
    module.to(device)
    if module._reference is not None:
        module._reference.to(device)
    module.log_dict = module.log = lambda *a, **k: None  # no trainer here: the step's metrics are dropped
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-5)
    collate = PairCollator(tokenizer.pad_token_id)
    seconds = 0.0
    for step in range(steps + 1):
        chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        data = {k: v.to(device) for k, v in collate(chunk).items()}
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed == "bf16-mixed"):
            loss = module._preference_step(data, "train")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up allocators and kernels
            seconds += time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "reference_s": reference_s, "pairs_per_s": steps * batch / seconds, "peak_mib": peak,
            "precision": mixed}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="seconds-long check of the whole machinery (CI)")
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "MODE"), help=argparse.SUPPRESS)  # a child's job
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.pairs, args.steps, args.batch = "tiny", 4, 1, 2
    if args.one:
        print(json.dumps(run_mode(args.one[0], args.one[1], args.pairs, args.steps, args.batch)))
        return []
    rows = []
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as folder:
        make_model(Path(folder), args.size)
        for mode in ("cached", "live"):
            command = [sys.executable, __file__, "--one", folder, mode, "--pairs", str(args.pairs),
                       "--steps", str(args.steps), "--batch", str(args.batch)]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"GPT-2 {args.size} (random init), {args.pairs} pairs, {args.steps} steps of {args.batch} pairs, "
          f"{rows[0]['precision']}")
    print(f"{'reference':<10s} {'reference s':>11s} {'pairs/s':>8s} {'peak MiB':>9s}")
    for row in rows:
        print(f"{row['mode']:<10s} {row['reference_s']:>11.1f} {row['pairs_per_s']:>8.2f} {row['peak_mib']:>9.0f}")
    cached, live = rows
    print(f"cached vs live: {cached['pairs_per_s'] / live['pairs_per_s']:.2f}x the pairs/s, "
          f"{cached['peak_mib'] - live['peak_mib']:+.0f} MiB peak")
    record("dpo_step", rows, argv, smoke=args.smoke)
    return rows


if __name__ == "__main__":
    main()
