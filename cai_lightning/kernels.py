"""Compute kernels the models run on a CPU in place of PyTorch's or transformers' own, where those measured slower:
attention as two matmuls for bf16 (:func:`cpu_sdpa_attention`, registered with transformers as
``"cai_lightning_sdpa"``) and dropout drawn from uniform floats (:class:`Dropout`). Elsewhere (CUDA, fp32) each is
the library's own. :meth:`cai_lightning.model.CodeLM.configure_model` puts them in the network; the decoding
attention of generation lives beside its cache in :mod:`cai_lightning.generation`."""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from cai_lightning.devices import freed_memory_kept


def dropout_by_uniforms(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout on the CPU with its mask drawn as uniform floats compared with ``p``: the same Bernoulli(1 - p) keep
    mask and 1 / (1 - p) scaling as ``F.dropout``, in ~half the time of the CPU's ``bernoulli_``. ``0 < p < 1``."""
    keep = (torch.rand(x.shape, device=x.device) >= p).to(x.dtype) * (1 / (1 - p))
    return x * keep


def cpu_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                       is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except for bf16 on the CPU, which :func:`matmul_attention` computes.

    PyTorch's fused CPU kernel (flash attention for CPU) took 1.8-3.2x as long on bf16 inputs, forward + backward,
    and 1.9-2.1x on fp32 casts of them (``bench/cpu_attention.py``: batch 16, 4 heads of 64, lengths 128-384,
    padded; a 2-core AVX512-BF16 CPU). The matmuls need their scores' memory reused from step to step
    (:func:`~cai_lightning.devices.keep_freed_memory`, which the CLI applies): mapped afresh every step, they ran
    at 0.7x the fused kernel at length 384. Without it, and above ``MATH_ATTENTION_MAX_SCORES`` scores a layer
    (the matmuls keep 2 bytes a score for the backward, the fused kernel none), the fused kernel runs, on fp32
    casts (0.9-1.6x its speed on bf16). Elsewhere (CUDA, fp32, position biases, soft-capping) it is ``sdpa``
    itself. Registered with transformers as ``"cai_lightning_sdpa"``, which :meth:`~cai_lightning.model.CodeLM.configure_model` sets
    in place of ``sdpa``; a config saved from the model does not record it (exports load with ``sdpa``)."""
    sdpa_kwargs = dict(dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    if (query.device.type != "cpu" or query.dtype != torch.bfloat16 or kwargs.get("position_bias") is not None
            or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **sdpa_kwargs)
    batch, heads, q_length, _ = query.shape
    if batch * heads * q_length * key.shape[2] > MATH_ATTENTION_MAX_SCORES or not freed_memory_kept():
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        out, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                        **sdpa_kwargs)
        return out.to(query.dtype), None
    groups = getattr(module, "num_key_value_groups", 1)
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = matmul_attention(query, repeat_kv(key, groups), repeat_kv(value, groups), attention_mask,
                           scaling=scaling, is_causal=is_causal, dropout=dropout)
    return out, None


def matmul_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
                     scaling: float | None = None, is_causal: bool = True, dropout: float = 0.0) -> torch.Tensor:
    """Attention as transformers' "eager" formula: two matmuls in the inputs' dtype around a softmax of the scores
    plus an additive mask, the queries scaled before the first. ``(batch, heads, length, dim)`` in, as many key as
    query heads; ``(batch, length, heads, dim)`` out. The mask is sdpa's (True = attend; masked scores get the
    dtype's minimum, as eager's do) or additive; without one, ``is_causal`` works as sdpa's (aligned top-left,
    keys past the queries cut off). ``dropout`` > 0 drops attention probabilities (:func:`dropout_by_uniforms`).

    Unlike eager, the softmax takes and gives the scores' dtype (bf16), not an fp32 copy: PyTorch's CPU kernel
    computes in fp32 all the same, the scores are the bf16 matmul's already and the probabilities go into a bf16
    matmul, so the forward's output is eager's to the bit; the backward keeps 2 bytes a score instead of 6 and
    works from the rounded probabilities (its error against fp32 sdpa: mean |dq| 0.0094 against 0.0091). On the
    default recipe (2-core CPU, 2026-12-03): the attention 1.1-1.7x faster (``bench/cpu_attention.py``), the
    step 1.04x (paired in-process A/B, 10 epochs each), 150-320 MB less resident memory over six epochs
    (``bench/memory_growth.py``), best val/loss 3.541814 against 3.541847."""
    q_length = query.shape[2]
    if attention_mask is None and is_causal and q_length > 1:
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        attention_mask = torch.ones(q_length, q_length, dtype=torch.bool, device=query.device).tril()
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = (query * scaling) @ key.transpose(-1, -2)
    if attention_mask is not None:
        lowest = torch.finfo(scores.dtype).min  # fp32's minimum would round to -inf in bf16: a masked row's NaN
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=query.device).masked_fill_(
                ~attention_mask, lowest)
        else:
            attention_mask = attention_mask.clamp(min=lowest).to(scores.dtype)
        # In place: the matmul's backward does not keep its output, and an add passes its gradient through (a
        # masked_fill_ here ran the attention at 0.82-0.87x: its backward is another full pass).
        scores.add_(attention_mask)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        probs = dropout_by_uniforms(probs, dropout)
    return (probs @ value).transpose(1, 2).contiguous()


# Above this many attention scores per layer (batch x heads x queries x keys; 2 bytes each, the bf16
# probabilities, kept for the backward: 192 MiB a layer) bf16 attention on the CPU takes PyTorch's fused kernel
# instead of matmul_attention. The default recipe's largest batch has 16 x 4 x 384 x 384 = 9.4M.
MATH_ATTENTION_MAX_SCORES = 3 * 2**25


CPU_SDPA = "cai_lightning_sdpa"
AttentionInterface.register(CPU_SDPA, cpu_sdpa_attention)
AttentionMaskInterface.register(CPU_SDPA, sdpa_mask)  # the masks sdpa gets


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` that on the CPU is :func:`dropout_by_uniforms` (``bernoulli_`` was 11-13 % of a bf16 step).
    Elsewhere (CUDA fuses dropout into one kernel) and for ``p`` = 1 it is ``nn.Dropout``.
    :meth:`~cai_lightning.model.CodeLM.configure_model` puts it in place of the network's dropouts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.p >= 1 or x.device.type != "cpu":
            return super().forward(x)
        return dropout_by_uniforms(x, self.p)


def replace_dropouts(model: torch.nn.Module, old: type[torch.nn.Dropout], new: type[torch.nn.Dropout]) -> None:
    """Every dropout module of ``model`` of exactly the class ``old`` rebuilt as ``new`` with its ``p``, in place."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is old:
                setattr(module, name, new(child.p))
