from types import SimpleNamespace

import pytest
import torch

from cai_lightning import kernels
from cai_lightning.kernels import Dropout, cpu_sdpa_attention, matmul_attention


def test_dropout_keeps_each_value_with_probability_1_minus_p_and_rescales_it():
    dropout = Dropout(0.25)
    x = torch.full((200, 1000), 2.0, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005  # 2e5 Bernoulli(0.75) draws: sd 0.001
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0 / 0.75))
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.75)  # the gradient flows through the kept values only
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # the same mask for the same seed
    assert not torch.equal(dropout(x), y)  # and a new one on the next call
    assert torch.equal(dropout.eval()(x), x)
    with torch.no_grad():
        half = Dropout(0.25)(x.bfloat16())
    assert half.dtype == torch.bfloat16 and set(half.unique().tolist()) == {0.0, 2 * torch.tensor(1 / 0.75).bfloat16().item()}
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def _right_padded(batch, queries, keys):
    lengths = torch.tensor([keys, keys - 3, 2])[:batch]
    keep = torch.arange(keys)[None, :] < lengths[:, None]
    causal = torch.ones(queries, keys, dtype=torch.bool).tril(keys - queries)
    return causal[None, None] & keep[:, None, None, :]  # (B, 1, Tq, Tk), True = attend, as sdpa_mask builds it


@pytest.mark.parametrize(
    ("case", "heads", "kv_heads", "queries", "keys"),
    [
        ("padded", 4, 4, 9, 9),
        ("no mask: causal", 4, 4, 9, 9),
        ("grouped-query", 6, 2, 9, 9),
        ("one query, cached keys", 4, 4, 1, 12),
    ],
)
def test_cpu_sdpa_on_bf16_gives_fp32_sdpas_output_and_gradients(case, heads, kv_heads, queries, keys, monkeypatch):
    monkeypatch.setattr(kernels, "freed_memory_kept", lambda: True)  # the matmul path, not the fused kernel
    torch.manual_seed(0)
    attention = SimpleNamespace(is_causal=True, num_key_value_groups=heads // kv_heads, training=False)
    q = torch.randn(3, heads, queries, 16, requires_grad=True)
    k, v = (torch.randn(3, kv_heads, keys, 16, requires_grad=True) for _ in range(2))
    mask = None if case == "no mask: causal" else _right_padded(3, queries, keys)
    bf16 = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    ours, _ = cpu_sdpa_attention(attention, *bf16, mask)
    expanded = [q] + [t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v)]
    exact = torch.nn.functional.scaled_dot_product_attention(*expanded, attn_mask=mask, is_causal=mask is None)
    exact = exact.transpose(1, 2)  # (B, T, H, D), as transformers' attention functions return it
    assert ours.dtype == torch.bfloat16 and ours.shape == exact.shape
    torch.testing.assert_close(ours.float(), exact, atol=3e-2, rtol=3e-2)
    grad = torch.randn(exact.shape)
    ours.backward(grad.bfloat16())
    exact.backward(grad)
    for mine, reference in zip(bf16, (q, k, v), strict=True):
        torch.testing.assert_close(mine.grad.float(), reference.grad, atol=5e-2, rtol=5e-2)


def test_matmul_attention_forward_is_eagers_fp32_softmax_to_the_bit():
    """The softmax on the bf16 scores gives exactly what eager's formula (an fp32 copy, softmaxed, cast back to
    bf16) gives: PyTorch's CPU kernel computes in fp32 inside. Only the backward's saved tensors differ."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 37, 16).bfloat16() for _ in range(3))
    allowed = _right_padded(3, 37, 37)
    scores = ((q * 16**-0.5) @ k.transpose(-1, -2)).float()
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    eager = (torch.softmax(scores, dim=-1).to(torch.bfloat16) @ v).transpose(1, 2)
    assert torch.equal(matmul_attention(q, k, v, allowed), eager)


def test_matmul_attention_takes_an_additive_fp32_mask_on_bf16_scores_without_nans():
    """transformers' additive masks hold fp32's minimum, which rounds to -inf in bf16: a fully masked row (a
    left-padded query) would softmax to NaN. Clamped to bf16's minimum it gives the boolean mask's output."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8).bfloat16() for _ in range(3))
    allowed = torch.ones(5, 5, dtype=torch.bool).tril().expand(2, 1, 5, 5).clone()
    allowed[1, :, :, :2] = False  # the second sequence left-padded by two
    allowed[1, :, :2, :] = False  # its two padding queries see nothing at all
    additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    out = matmul_attention(q, k, v, additive)
    assert not out.isnan().any()
    assert torch.equal(out, matmul_attention(q, k, v, allowed))


def test_matmul_attention_drops_probabilities_unbiased():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, dtype=torch.bfloat16) for _ in range(3))
    plain = matmul_attention(q, k, v, None).float()
    draws = torch.stack([matmul_attention(q, k, v, None, dropout=0.5).float() for _ in range(2000)])
    assert not torch.equal(draws[0], plain)  # dropped
    torch.testing.assert_close(draws.mean(0), plain, atol=0.1, rtol=0)  # kept ones scaled by 1 / (1 - p)


@pytest.mark.parametrize("why", ["more scores than its budget", "freed memory not kept"])
def test_cpu_sdpa_leaves_fp32_to_sdpa_and_bf16_to_the_fused_kernel_in_fp32_when(why, monkeypatch):
    attention = SimpleNamespace(is_causal=True, training=False)
    q, k, v = (torch.randn(2, 2, 7, 16) for _ in range(3))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    assert torch.equal(cpu_sdpa_attention(attention, q, k, v, None)[0], exact)
    monkeypatch.setattr(kernels, "freed_memory_kept", lambda: why != "freed memory not kept")
    if why == "more scores than its budget":
        monkeypatch.setattr(kernels, "MATH_ATTENTION_MAX_SCORES", 2 * 2 * 7 * 7 - 1)
    fused, _ = cpu_sdpa_attention(attention, q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    cast = torch.nn.functional.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(),
                                                            v.bfloat16().float(), is_causal=True)
    assert torch.equal(fused, cast.transpose(1, 2).bfloat16())  # the fused kernel, in fp32
