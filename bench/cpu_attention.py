"""bf16 attention on the CPU, forward + backward: PyTorch's fused kernel against two matmuls around a softmax.

    python bench/cpu_attention.py [--lengths 128 212 300 384] [--batch 16] [--heads 4] [--head-dim 64]
        [--repeats 7] [--glibc-malloc] [--smoke]

The shapes default to the default recipe's (batch 16, 4 heads of 64; its batches run 120-384 tokens long), with a
right-padded causal mask as transformers' ``sdpa_mask`` builds it (the batch's lengths spread over the upper half of
the length). Rows, each timed on the same inputs, in a rotated order every repeat, median ms over ``--repeats``:

  sdpa-bf16      transformers' ``sdpa`` on the bf16 inputs: what a bf16-autocast Trainer step runs
  sdpa-fp32      the same kernel on inputs cast to fp32 (and the output back): this project's path before
  matmuls        ``cai_lightning.kernels.matmul_attention``: two bf16 matmuls around a softmax (fp32 inside), what
                 ``cpu_sdpa_attention`` runs for bf16 on the CPU once freed memory is kept

``--glibc-malloc`` leaves glibc's malloc as it is instead of keeping freed memory for reuse as ``python -m
cai_lightning`` does (``cai_lightning.devices.keep_freed_memory``): the page faults of the scores, mapped afresh
every step, show there; they are why ``cpu_sdpa_attention`` takes the fused kernel when freed memory is not kept.

``--smoke``: small shapes, one repeat (CI).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cai_lightning.devices import cpu_supports_bf16, keep_freed_memory
from cai_lightning.kernels import matmul_attention
from harness import record


def padded_causal_mask(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, 1, length, length), True = attend: causal, and the keys past each row's length masked."""
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[0] = length  # the batch is as long as its longest row
    keep = torch.arange(length)[None, :] < lengths[:, None]
    return torch.ones(length, length, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]


def rows(module) -> dict:
    def sdpa_bf16(q, k, v, mask):
        return sdpa_attention_forward(module, q, k, v, mask)[0]

    def sdpa_fp32(q, k, v, mask):
        return sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask)[0].to(q.dtype)

    return {"sdpa-bf16": sdpa_bf16, "sdpa-fp32": sdpa_fp32, "matmuls": matmul_attention}


def time_row(fn, q, k, v, mask, grad) -> float:
    """Milliseconds of one forward + backward."""
    start = time.perf_counter()
    out = fn(q, k, v, mask)
    out.backward(grad)
    elapsed = time.perf_counter() - start
    q.grad = k.grad = v.grad = None
    return elapsed * 1000


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 212, 300, 384])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--glibc-malloc", action="store_true", help="leave glibc's malloc as it is")
    parser.add_argument("--smoke", action="store_true", help="seconds: small shapes, one repeat (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.batch, args.repeats = [16, 40], 2, 1
    if not cpu_supports_bf16():
        print("note: this CPU has no native bf16; the bf16 matmuls are emulated and slow")
    kept = not args.glibc_malloc and keep_freed_memory()
    module = SimpleNamespace(is_causal=True, training=False)  # what the attention functions read of a layer
    generator = torch.Generator().manual_seed(0)
    print(f"batch {args.batch}, {args.heads} heads of {args.head_dim}, bf16, forward + backward, "
          f"{torch.get_num_threads()} threads, malloc {'keeps freed memory' if kept else 'as glibc sets it'}; "
          f"median ms over {args.repeats} repeats")
    fns = rows(module)
    table = []
    for length in args.lengths:
        shape = (args.batch, args.heads, length, args.head_dim)
        q, k, v = (torch.randn(shape, generator=generator, dtype=torch.bfloat16).requires_grad_() for _ in range(3))
        mask = padded_causal_mask(args.batch, length, generator)
        grad = torch.randn(args.batch, length, args.heads, args.head_dim, generator=generator, dtype=torch.bfloat16)
        for fn in fns.values():  # warm-up: first-call allocations and kernel selection
            time_row(fn, q, k, v, mask, grad)
        with torch.no_grad():  # the same attention, up to bf16 rounding
            difference = (fns["matmuls"](q, k, v, mask).float() - fns["sdpa-fp32"](q, k, v, mask).float()).abs().max()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for repeat in range(args.repeats):
            names = list(fns)
            for name in names[repeat % len(names):] + names[: repeat % len(names)]:
                times[name].append(time_row(fns[name], q, k, v, mask, grad))
        ms = {name: statistics.median(values) for name, values in times.items()}
        table.append({"length": length, **ms, "max_abs_difference": difference.item()})
    headers = " | ".join(f"{name} ms".rjust(12) for name in fns)
    print(f"\n| length | {headers} | vs sdpa-bf16 | vs sdpa-fp32 | max abs Δ |")
    print(f"|-------:|{'|'.join('-' * 13 + ':' for _ in fns)}|-------------:|-------------:|----------:|")
    for row in table:
        cells = " | ".join(f"{row[name]:12.1f}" for name in fns)
        print(f"| {row['length']:6d} | {cells} | {row['sdpa-bf16'] / row['matmuls']:11.2f}× | "
              f"{row['sdpa-fp32'] / row['matmuls']:11.2f}× | {row['max_abs_difference']:9.4f} |")
    print("vs X: X's time over matmuls' (> 1: the matmuls are faster); max abs Δ: largest difference of matmuls' from "
          "sdpa-fp32's (bf16 outputs: one bf16 step at the outputs' magnitude is 1/128 to 1/64)")
    record("cpu_attention", table, argv, smoke=args.smoke)
    return table


if __name__ == "__main__":
    main()
