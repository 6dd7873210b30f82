"""Which device, and which number format on it: the few facts about the hardware the code branches on."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 is ~3-6x fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def computes_in_bf16(device: torch.device) -> bool:
    """The project's one precision decision, which every other asks: whether ``device`` gets bf16. A GPU does
    (as ``trainer.precision: bf16-mixed`` assumes); a CPU only with native bf16 matmul (AVX512-BF16 or AMX),
    where bf16 is ~3-6x fp32, and elsewhere emulated bf16 is slower than fp32."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())


def inference_dtype(device: torch.device) -> torch.dtype:
    """The dtype a model only generating (never trained) gets on ``device``: bf16 where
    :func:`computes_in_bf16` says so (a 135M critic generated 1.7x faster in bf16 than in fp32 on 2
    AVX512-BF16 cores), else fp32."""
    return torch.bfloat16 if computes_in_bf16(device) else torch.float32


def training_precision(requested: str, device: torch.device) -> str:
    """The ``trainer.precision`` a run on ``device`` gets: ``bf16-mixed`` becomes ``32-true`` where
    :func:`computes_in_bf16` says no; anything else stays as requested."""
    return "32-true" if str(requested) == "bf16-mixed" and not computes_in_bf16(device) else str(requested)


def weights_sharded(trainer) -> bool:
    """Whether each rank holds only a shard of the weights (FSDP): a forward pass then needs every rank."""
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


_freed_memory_kept = False


def keep_freed_memory() -> bool:
    """Have glibc's ``malloc`` keep freed memory in the process for the next allocation; True if applied.

    By default glibc gives every block above its mmap threshold (dynamic, at most 32 MiB) back to the OS on
    ``free``, and trims the heap's free top. A CPU training step allocates and frees the same large activations
    every step (the default recipe's attention scores are up to 16 x 4 x 384 x 384 fp32, 38 MB), so each step maps
    them afresh and the kernel zero-fills them page by page on first touch: ``matmul_attention``'s forward +
    backward took 1.8-2.7x as long that way at lengths 128-384 (``bench/cpu_attention.py``), the default recipe's
    whole bf16 step, with the fused attention kernel, 1.06x. Raising both thresholds is what PyTorch's CPU
    performance guide gets from jemalloc or tcmalloc, without preloading either. The cost: the process's resident
    memory stays at its peak, as with the CUDA caching allocator, and that peak creeps up: batches of ever new
    shapes fragment glibc's heap (~300 MB an epoch in the default recipe, ``bench/memory_growth.py``), which a
    preloaded tcmalloc avoids (README, "Memory new to the process"). Linux with glibc only (elsewhere nothing
    changes); the CLI calls it at start."""
    global _freed_memory_kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    most = 2**31 - 1  # mallopt takes an int
    if libc.mallopt(m_mmap_threshold, most) and libc.mallopt(m_trim_threshold, most):
        _freed_memory_kept = True
    return _freed_memory_kept


def malloc_in_use(kept: bool) -> str:
    """What the benchmarks' headers say of the allocator: a preloaded one (``LD_PRELOAD``, e.g. tcmalloc, whose
    ``mallopt`` does nothing) or glibc's, with freed memory kept (``kept``) or as glibc sets it."""
    if os.environ.get("LD_PRELOAD"):
        return f"malloc preloaded: {os.environ['LD_PRELOAD']}"
    return f"malloc {'keeps freed memory (as the CLI)' if kept else 'as glibc sets it'}"


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process: the CPU attention's matmul path wants it."""
    return _freed_memory_kept
