"""Decoding pieces shared by every model that generates here: the fine-tuned model (evaluation, ``predict``,
the sample callback) and the constitution's critic.

* :class:`TopKTopPSampler` draws the next token (temperature, top-k, top-p) inside ``generate``'s logits
  processors, so that ``generate`` runs greedy and takes the draw. With one ``torch.Generator`` per prompt,
  each prompt's samples depend on its own seed only, not on which prompts share its batch.
* :class:`FencedBlockEnd` stops a sequence once its reply holds a whole fenced code block: when only that
  block is scored, what a model writes after it is decoding time spent for nothing.
* :func:`decode` is the batched decoding loop of the constitution's critic and of the fine-tuned model's
  greedy and sampled generation (evaluation, ``predict``): prompts encoded in groups of similar length, a
  prompt that begins with one of the previous call's prompts encoded only from where they part
  (:class:`PromptCache`), a preallocated KV cache for the decoding steps (on a CPU, of the generated tokens
  only, each prompt's keys and values kept once beside it and read by :func:`decode_attention`), each
  sequence ending at EOS or at its stop criterion, and the finished sequences dropped from the batch as
  they accumulate; with ``lookup``, several tokens a step where a reply copies its prompt
  (:class:`PromptLookup`), the same text either way.

Why one long module: the decoding loop and the attention and cache it installs into the model work as one (the
attention reads the loop's per-call state); apart, that state would cross modules.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import (
    AttentionInterface, DynamicCache, LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase, StaticCache,
    StoppingCriteria,
)
from transformers.cache_utils import StaticLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

# How a fenced Python block opens in a reply; ``constitution.prompts.extract_code`` reads code from the first one.
FENCE_OPENING = r"```(?:python|py)?[ \t]*\n"
# A reply's first fenced Python block, closed: what ``extract_code`` takes when the reply has one.
FENCED_BLOCK = re.compile(FENCE_OPENING + r".*?```", re.DOTALL)


class TopKTopPSampler(LogitsProcessor):
    """Temperature, top-k and top-p (nucleus) sampling, drawn among the ``top_k`` best tokens only.

    ``generate(do_sample=True)`` sorts the whole vocabulary for top-p and draws with ``torch.multinomial``
    over all of it: on a CPU that is ~2 ms of a ~7 ms decoding step of the offline critic at batch 32,
    more than its two attention layers. The same distribution is drawn here from the ``top_k`` best
    logits alone. The result is a score row that is ``-inf`` everywhere but at the drawn token, so
    ``generate`` is run greedy (``do_sample=False``) and its argmax takes the draw; processors the model's
    generation config adds (repetition penalty, banned words, ...) run before this one.

    Args:
        temperature: Divides the logits.
        top_k: How many of the best tokens can be drawn; 0 for the whole vocabulary.
        top_p: The smallest set of best tokens whose probability reaches ``top_p`` is kept.
        generators: One per prompt, for batches whose rows are each prompt's ``rows_per_generator`` rows
            in a row (``generate``'s order): each prompt's rows are drawn from its own generator, so what it
            samples does not depend on the other prompts of the batch. ``None``: the global generator.
        rows_per_generator: Rows per prompt (its ``n`` samples).
    """

    def __init__(
        self, temperature: float, top_k: int, top_p: float,
        generators: Sequence[torch.Generator] | None = None, rows_per_generator: int = 1,
    ) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators, self.rows_per_generator = generators, rows_per_generator

    def _kept(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens that can be drawn, best first, and their probabilities (not renormalised), ``(B, k)`` each."""
        k = min(self.top_k or scores.size(-1), scores.size(-1))
        best, tokens = scores.topk(k, dim=-1)  # (B, k), best first
        probs = (best.float() / self.temperature).softmax(-1)
        # a token is kept if the tokens better than it hold less than top_p: the best one always is
        return probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p, 0.0), tokens

    def draw(self, scores: torch.Tensor, row_generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The next token of each row, ``(B,)``, row ``i`` drawn with ``row_generators[i]`` (for :func:`decode`,
        whose rows each have their own generator)."""
        probs, tokens = self._kept(scores)
        probs = probs.cpu()
        picks = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(row_generators)])
        return tokens.gather(-1, picks.to(tokens.device)[:, None]).squeeze(-1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs, tokens = self._kept(scores)
        if self.generators is None:
            picks = torch.multinomial(probs, 1)  # multinomial renormalises
        else:
            n = self.rows_per_generator
            if len(self.generators) * n != probs.size(0):
                raise ValueError(f"{len(self.generators)} generators x {n} rows for a batch of {probs.size(0)} rows")
            picks = torch.cat([
                torch.multinomial(probs[i * n : (i + 1) * n].cpu(), 1, generator=generator)
                for i, generator in enumerate(self.generators)
            ]).to(probs.device)
        drawn = tokens.gather(-1, picks)
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed (draws are made on the CPU, so a seed means the same on any device)."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


class FencedBlockEnd(StoppingCriteria):
    """Finished: the rows whose new text (after the first ``prompt_length`` tokens) holds a closed fenced
    Python block (:data:`FENCED_BLOCK`). ``generate`` pads a finished row from then on and stops when every
    row is finished; the code taken from such a reply (its first fenced block) is what the whole reply
    would have given.

    Each step decodes the new tokens of the rows not yet finished (a fence can span tokens): a fraction of
    a millisecond a row, little beside a forward pass.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.done: torch.Tensor | None = None  # (B,) bool

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.done is None or self.done.size(0) != input_ids.size(0):
            self.done = torch.zeros(input_ids.size(0), dtype=torch.bool)
        new = input_ids[:, self.prompt_length :].tolist()
        for row in (~self.done).nonzero().flatten().tolist():
            self.done[row] = self.is_complete(new[row])
        return self.done.to(input_ids.device)

    def is_complete(self, new_ids: Sequence[int]) -> bool:
        """Whether a reply (its new ids) holds a closed fenced Python block."""
        return FENCED_BLOCK.search(self.tokenizer.decode(new_ids, skip_special_tokens=True)) is not None

    def may_complete(self, vocab_size: int) -> torch.Tensor:
        """``(vocab_size,)`` bool: the tokens holding a backtick, the only ones whose arrival can close a block
        (:func:`decode` asks :meth:`is_complete` after those only)."""
        if getattr(self, "_may_complete", None) is None or self._may_complete.numel() != vocab_size:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(self.tokenizer)))))
            marks = [piece is not None and "`" in piece for piece in pieces]
            self._may_complete = torch.tensor(marks + [False] * (vocab_size - len(marks)), dtype=torch.bool)
        return self._may_complete


# ------------------------------------------------------------------------------------------------- decoding
DECODE_ATTENTION = "cai_lightning_decode"  # registered with transformers below


@dataclass(frozen=True)
class _Decoding:
    """What :func:`decode_attention` knows of the generation it serves.

    n: samples per prompt (the cache's rows are each prompt's ``n`` copies in a row).
    prompts: per layer, the prompts' keys and values (one copy per prompt, ``(B, H, P, D)``), for
        attending each prompt once for its ``n`` samples; ``None`` where that is not done (``n == 1``).
    prompt_mask: the prompts' padding as an additive mask, ``(B, 1, 1, P)``.
    no_prompt: ``(B * n, 1, 1, 1)``, true for the samples of a prompt that is all padding there (a
        one-token prompt among longer ones).
    fold_groups: With grouped-query attention, attend a key/value head's query heads as its queries;
        false: cut the cache only and leave the rest to transformers' SDPA (the critic's ``transformers``
        decoder, as it was before :func:`decode`).
    row_prompt, row_sample: ``(R,)`` each, set by :func:`decode` whose cache holds the generated tokens
        only: each row's prompt (an index into ``prompts``) and which of its ``n`` samples the row is.
        Rows that have ended leave the batch, so a prompt may have fewer than ``n`` rows left.
    """

    n: int
    prompts: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prompt_mask: torch.Tensor | None = None
    no_prompt: torch.Tensor | None = None
    fold_groups: bool = True
    row_prompt: torch.Tensor | None = None
    row_sample: torch.Tensor | None = None

    @classmethod
    def of(cls, cache, prompt_mask: torch.Tensor, n: int) -> _Decoding:
        """From the static cache just filled with the prompts (before its rows are repeated), for the
        critic's ``transformers`` decoder (``fold_groups`` false)."""
        if n == 1 or not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
            return cls(n, fold_groups=False)
        width = prompt_mask.size(1)
        keys = [(layer.keys[:, :, :width], layer.values[:, :, :width]) for layer in cache.layers]
        return dataclasses.replace(cls.of_prompts(keys, prompt_mask, n), fold_groups=False)

    @classmethod
    def of_prompts(cls, prompts: list[tuple[torch.Tensor, torch.Tensor]], prompt_mask: torch.Tensor, n: int) -> _Decoding:
        """From each layer's prompt keys and values, ``(B, H, P, D)`` with ``prompt_mask`` ``(B, P)`` true where
        real (the flash kernel for the CPU, which returns the log-sum-exp, must exist)."""
        keys = prompts[0][0]
        width, real = prompt_mask.size(1), prompt_mask.bool().to(keys.device)
        mask = torch.zeros(real.size(0), 1, 1, width, dtype=keys.dtype, device=keys.device)
        mask.masked_fill_(~real[:, None, None, :], float("-inf"))
        prompts = [(k.contiguous(), v.contiguous()) for k, v in prompts]
        return cls(n, prompts, mask, ~real.any(-1).repeat_interleave(n)[:, None, None, None])


_DECODING: ContextVar[_Decoding | None] = ContextVar("cai_lightning_decoding", default=None)


def _attends_by_decode_attention(model: PreTrainedModel) -> bool:
    """Whether :func:`_decoding_with` can have ``model`` decode with :func:`decode_attention` (it runs
    transformers' SDPA, and its attention can be switched)."""
    return model.config._attn_implementation == "sdpa" and model._can_set_attn_implementation()


@contextmanager
def _decoding_with(model: PreTrainedModel, decoding: _Decoding | None):
    """Decode with :func:`decode_attention` for the duration, where the model runs transformers' SDPA."""
    previous = model.config._attn_implementation
    if decoding is None or not _attends_by_decode_attention(model):
        yield
        return
    token = _DECODING.set(decoding)
    model.set_attn_implementation(DECODE_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _DECODING.reset(token)


def decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA, for decoding steps on the CPU from a preallocated (static) KV cache, reading
    only what the cache holds.

    A static cache is allocated for the prompt and every new token, and SDPA attends over all of it,
    masking the unfilled tail; on a CPU, where a decoding step of a small model is bound by reading the
    cache, that is up to twice the reads needed. Here the keys and values are cut where the cache's
    filling ends. With grouped-query attention the query heads that share a key/value head are attended as
    that head's queries, where transformers' SDPA (given a mask) copies every key/value head once per query
    head, the whole cache at every step (SmolLM2-135M, batch 16, 700 cached tokens, 2 cores: most of a
    278 ms step). With ``n`` samples per prompt, the prompt's keys and values (the same ``n``
    times over) are moreover attended once per prompt with the ``n`` queries stacked, the generated
    tokens per sample, and the two partial results merged by their log-sum-exp, as flash attention merges
    blocks. Measured on 2 cores (offline critic, batch 16): response generation 2.72 -> 2.14 s, two
    revisions per row 5.27 -> 4.61 s over cutting alone. Anything else (a query of more than one token, no
    boolean mask, soft-capping, training) is transformers' SDPA unchanged.
    """
    decoding = _DECODING.get()
    fed = query.size(2)  # tokens fed a row: 1, or more where decode feeds guesses (its split cache only)
    if (
        decoding is None or (fed != 1 and decoding.row_prompt is None) or attention_mask is None
        or attention_mask.dtype != torch.bool or module.training or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rows, heads, _, dim = query.shape
    kv_heads = key.size(1)
    groups = heads // kv_heads  # query heads per key/value head (grouped-query attention)
    mask = attention_mask.expand(rows, 1, fed, -1)  # True: attend
    end = int(mask[0, 0, -1].nonzero()[-1]) + 1  # where the filling ends: the last fed token attends to itself
    if not decoding.fold_groups and (decoding.prompts is None or groups > 1):  # cut only
        return sdpa_attention_forward(
            module, query, key[:, :, :end], value[:, :, :end], mask[..., :end], dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = dim**-0.5 if scaling is None else scaling
    # a key/value head's query heads stacked as that head's queries: (B, KV, G, D) against (B, KV, L, D), where
    # transformers' SDPA would copy each key/value head G times over (with a mask it does not ask SDPA for GQA)
    if decoding.row_prompt is not None:  # a fed token's queries as (head's query head, token), each token's mask
        grouped = query.reshape(rows, kv_heads, groups * fed, dim)
        out = _split_attention(
            decoding, module.layer_idx, grouped, key[:, :, :end], value[:, :, :end], mask[..., :end].repeat(1, 1, groups, 1), scaling
        )
        return out.reshape(rows, heads, fed, dim).transpose(1, 2), None
    grouped = query.reshape(rows, kv_heads, groups, dim)
    if decoding.prompts is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped, key[:, :, :end], value[:, :, :end], attn_mask=mask[..., :end], scale=scaling
        )
        return out.reshape(rows, heads, 1, dim).transpose(1, 2), None
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # also returns the log-sum-exp
    prompt_keys, prompt_values = decoding.prompts[module.layer_idx]
    width, n = prompt_keys.size(2), decoding.n
    # the prompt: each prompt's n samples' queries stacked, (P, KV, G * n, D), against its keys (P, KV, W, D), once
    stacked = query.reshape(rows // n, n, kv_heads, groups, dim).permute(0, 2, 3, 1, 4).reshape(rows // n, kv_heads, groups * n, dim)
    on_prompt, lse_prompt = flash(stacked, prompt_keys, prompt_values, attn_mask=decoding.prompt_mask, scale=scaling)
    on_prompt = on_prompt.view(rows // n, kv_heads, groups, n, dim).permute(0, 3, 1, 2, 4).reshape(rows, heads, 1, dim)
    lse_prompt = lse_prompt.view(rows // n, kv_heads, groups, n).permute(0, 3, 1, 2).reshape(rows, heads, 1, 1)
    # the generated tokens, per sample
    generated_mask = torch.zeros(rows, 1, 1, end - width, dtype=query.dtype, device=query.device)
    generated_mask.masked_fill_(~mask[..., width:end], float("-inf"))
    on_generated, lse_generated = flash(
        grouped, key[:, :, width:end], value[:, :, width:end], attn_mask=generated_mask, scale=scaling
    )
    on_generated, lse_generated = on_generated.reshape(rows, heads, 1, dim), lse_generated.reshape(rows, heads, 1, 1)
    # the softmax over both parts is each part's softmax weighted by its share of the total mass; a
    # prompt that is all padding has none (the kernel reports 0 for a row it masks whole, not -inf)
    lse_prompt = lse_prompt.masked_fill(decoding.no_prompt, float("-inf"))
    share = torch.sigmoid(lse_prompt - lse_generated).to(query.dtype)  # the kernel's lse is fp32
    out = on_generated + (on_prompt - on_generated) * share
    return out.transpose(1, 2), None


def _split_attention(decoding: _Decoding, layer: int, grouped, key, value, mask, scaling: float):
    """Attention of one decoding step when the cache holds the generated tokens only (:func:`decode`): each
    prompt's keys and values, once, against the stacked queries of its samples still in the batch, and each
    row's generated tokens; the two merged by their log-sum-exp. ``grouped``: ``(R, KV, G, D)``, a key/value
    head's ``G`` queries (its query heads, times the tokens fed), ``mask`` ``(R, 1, G, L)`` or ``(R, 1, 1, L)``;
    returns ``(R, KV, G, D)``."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # also returns the log-sum-exp
    rows, kv_heads, groups, dim = grouped.shape
    prompt_keys, prompt_values = decoding.prompts[layer]
    prompts, n = prompt_keys.size(0), decoding.n
    where = (decoding.row_prompt, decoding.row_sample)
    if n == 1 and rows == prompts:  # one sample a prompt, none gone: the rows are the prompts
        stacked = grouped
    else:  # (P, n, KV, G, D), a prompt's samples side by side (zeros where one has left), as (P, KV, n * G, D)
        stacked = grouped.new_zeros(prompts, n, kv_heads, groups, dim).index_put_(where, grouped)
        stacked = stacked.permute(0, 2, 1, 3, 4).reshape(prompts, kv_heads, n * groups, dim)
    on_prompt, lse_prompt = flash(stacked, prompt_keys, prompt_values, attn_mask=decoding.prompt_mask, scale=scaling)
    if not (n == 1 and rows == prompts):
        on_prompt = on_prompt.view(prompts, kv_heads, n, groups, dim).permute(0, 2, 1, 3, 4)[where]
        lse_prompt = lse_prompt.view(prompts, kv_heads, n, groups).permute(0, 2, 1, 3)[where]
    generated_mask = torch.zeros(mask.shape, dtype=grouped.dtype, device=grouped.device).masked_fill_(~mask, float("-inf"))
    on_generated, lse_generated = flash(grouped, key, value, attn_mask=generated_mask, scale=scaling)
    share = torch.sigmoid(lse_prompt - lse_generated).unsqueeze(-1).to(grouped.dtype)  # the kernel's lse is fp32
    return on_generated + (on_prompt - on_generated) * share  # (R, KV, G, D)


def _decode_attention_mask(*args, **kwargs):
    """transformers' SDPA mask, always made: where every slot is attended it would leave the mask out (SDPA's
    ``is_causal``), and :func:`decode_attention` needs it to tell a split cache's filled slots."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, _decode_attention_mask)


# ------------------------------------------------------------------------------------------------- the loop
_SEED_BITS = (1 << 63) - 1


def row_generators(seeds: Sequence[int], n: int) -> list[torch.Generator]:
    """One CPU generator per sample: ``n`` per prompt, sample ``j`` of the prompt seeded ``seed`` from
    ``(seed, j)`` alone, so that what a sample draws depends on nothing else in its batch, not even on
    which samples :func:`decode` has dropped as finished."""
    return [torch.Generator().manual_seed(hash((seed, j)) & _SEED_BITS) for seed in seeds for j in range(n)]


# Fewer leading tokens than this, shared with an earlier prompt, are encoded again (not worth the copying).
MIN_SHARED = 16


class PromptCache:
    """The keys and values of the prompts the last :func:`decode` call encoded, for the next call: a prompt
    that begins with one of them (a revision prompt goes on from its critique prompt) is encoded only from
    where the two part. Holds one call's prompts; ``reused`` and ``encoded`` count prompt tokens.

    Args:
        min_shared: Fewer shared tokens than this are encoded again (not worth the copying).
    """

    def __init__(self, min_shared: int = MIN_SHARED) -> None:
        self.min_shared = min_shared
        self.entries: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.reused = self.encoded = 0

    def longest_prefix(self, ids: torch.Tensor) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """How many leading tokens of ``ids`` (all but its last, whose logits start the decoding) an entry
        holds, and that entry's per-layer ``(keys, values)``, ``(H, L, D)``; ``(0, None)`` below ``min_shared``."""
        best, found = 0, None
        for key, kv in self.entries:
            m = min(len(key), len(ids) - 1)
            if m <= best or m < self.min_shared:
                continue
            differ = (key[:m] != ids[:m]).nonzero()
            shared = int(differ[0]) if len(differ) else m
            if shared > best:
                best, found = shared, kv
        return (best, found) if best >= self.min_shared else (0, None)


class PromptLookup:
    """Prompt-lookup guesses for one sequence: where the last ``ngram`` tokens written (down to 1) occurred
    before in its prompt or its reply (the latest place), the tokens that followed them there. Every n-gram
    is indexed once, as the reply grows.

    Args:
        prompt: The sequence's prompt (token ids).
        ngram: The longest tail looked up.
    """

    def __init__(self, prompt: Sequence[int], ngram: int = 2) -> None:
        self.text, self.prompt_length, self.ngram = list(prompt), len(prompt), ngram
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> where its latest occurrence ends
        self.indexed = 0  # n-grams ending up to here are indexed

    def after(self, reply: Sequence[int], most: int) -> list[int]:
        """Up to ``most`` tokens guessed to follow ``reply`` (the sequence's reply so far, which only grows)."""
        text = self.text
        text += reply[len(text) - self.prompt_length :]
        for end in range(self.indexed + 1, len(text)):  # not the tail itself, which ends at len(text)
            for size in range(1, min(self.ngram, end) + 1):
                self.latest[tuple(text[end - size : end])] = end
        self.indexed = max(self.indexed, len(text) - 1)
        for size in range(min(self.ngram, len(text) - 1), 0, -1):
            end = self.latest.get(tuple(text[-size:]))
            if end is not None:
                return text[end : end + most]
        return []


def _compacted(decoding: _Decoding, kept_rows: torch.Tensor) -> _Decoding:
    """``decoding`` for the rows ``kept_rows`` of its batch; once at most half of its prompts have a row left,
    the prompts without one are dropped too (copying the prompts that stay)."""
    row_prompt, row_sample = decoding.row_prompt[kept_rows], decoding.row_sample[kept_rows]
    prompts, mask = decoding.prompts, decoding.prompt_mask
    left = row_prompt.unique()  # sorted
    if 2 * len(left) <= mask.size(0):
        prompts = [(k.index_select(0, left), v.index_select(0, left)) for k, v in prompts]
        mask = mask.index_select(0, left)
        row_prompt = torch.searchsorted(left, row_prompt)
    return dataclasses.replace(decoding, prompts=prompts, prompt_mask=mask, row_prompt=row_prompt, row_sample=row_sample)


def _with_common_beginning(
    model: PreTrainedModel, ids: list[torch.Tensor], reuse: list[tuple[int, list | None]], cache_name: str, last_only: dict,
    prompt_cache: PromptCache | None,
) -> list[tuple[int, list | None]]:
    """``reuse`` where the prompts all begin alike (a chat template's system turn, a prompt template's fixed
    preamble): that beginning is encoded once, and every prompt that reuses less of an earlier call's is
    encoded from where it ends. At least :data:`MIN_SHARED` tokens, shared by at least two such prompts."""
    if len(ids) < 2:
        return reuse
    width = min(len(t) for t in ids) - 1  # a prompt's last token is encoded: its logits start the decoding
    first = ids[0][:width]
    for t in ids[1:]:
        differ = (t[:width] != first).nonzero()
        width = int(differ[0]) if len(differ) else width
        first = first[:width]
    if width < MIN_SHARED or sum(shared < width for shared, _ in reuse) < 2:
        return reuse
    cache = DynamicCache(config=model.config)
    out = model(input_ids=first[None].to(model.device), use_cache=True, **{cache_name: cache}, **last_only)
    kv = [(layer.keys[0], layer.values[0]) for layer in out[cache_name].layers]
    if prompt_cache is not None:
        prompt_cache.encoded += width
    return [(width, kv) if shared < width else (shared, found) for shared, found in reuse]


def supports_decode(model: PreTrainedModel) -> bool:
    """Whether :func:`decode` can run ``model``: a preallocated cache of plain attention layers (no sliding
    window, no recurrent state) and a model that takes ``position_ids``."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    try:
        cache = StaticCache(config=model.config, max_cache_len=8)
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    return all(type(layer) is StaticLayer for layer in cache.layers)


def _length_groups(order: list[int], lengths: Sequence[int], waste: float = 0.25, most: int = 16) -> list[list[int]]:
    """``order`` (indices sorted by ``lengths``, shortest first) cut into groups encoded together, each at
    most ``most`` prompts and padded by at most ``waste`` of its real tokens."""
    groups: list[list[int]] = []
    for i in order:
        group = groups[-1] if groups else None
        if group is not None and len(group) < most and (len(group) + 1) * lengths[i] <= (1 + waste) * (sum(lengths[j] for j in group) + lengths[i]):
            group.append(i)
        else:
            groups.append([i])
    return groups


@torch.inference_mode()
def decode(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_id: int,
    pad_token_id: int,
    n: int = 1,
    sampler: TopKTopPSampler | None = None,
    seeds: Sequence[int] | None = None,
    stop: FencedBlockEnd | None = None,
    prompt_cache: PromptCache | None = None,
    drop_share: float = 0.25,
    lookup: int = 0,
    lookup_ngram: int = 2,
    stats: dict[str, float] | None = None,
) -> list[list[int]]:
    """``n`` continuations of each prompt (token ids), ``len(prompts) * n`` lists of new ids in ``generate``'s
    order (a prompt's ``n`` in a row), each without its EOS.

    * Greedy (``sampler`` None) or drawn by ``sampler`` with :func:`row_generators` of ``seeds`` (one per
      prompt; default: the prompt's index).
    * The prompts are encoded in groups of similar length (:func:`_length_groups`), so little is spent on
      padding; a beginning all the prompts share (a chat template's system turn) is encoded once; with
      ``prompt_cache``, a prompt that begins with one of its entries is encoded from where they part, and the
      cache then holds this call's prompts.
    * A sequence ends at EOS, at ``max_new_tokens``, or where ``stop`` says its reply is complete; once
      ``drop_share`` of the batch has ended, the ended rows are dropped from it (and from the KV cache), so
      a batch costs what its sequences need, not its longest one times its size.
    * ``lookup``: prompt-lookup decoding. At each step a row feeds, after its last token, up to ``lookup``
      tokens guessed by :class:`PromptLookup` (what followed the last ``lookup_ngram`` tokens where they last
      occurred in its prompt or reply), and keeps each guess the model writes itself, with the model's token
      after the last kept one: several tokens a step where a reply copies its prompt (a revision), the same
      tokens either way (greedy, and sampled: each kept token is drawn as it would have been, from the row's
      generator). Guesses not kept cost the arithmetic of a fed token.
    * ``stats``, when given, adds up where the time went: ``encode_s`` (prompts), ``steps``, ``row_steps``
      (rows in the batch at each step, summed), ``fed`` (tokens fed, summed over rows), ``step_s``.

    Greedy continuations are those of ``generate`` from the same prompts (up to rounding: a prompt is not
    encoded in the same batch shape). ``model`` must :func:`supports_decode`.
    """
    if not prompts:
        return []
    device = model.device
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    ids = [torch.tensor(list(p), dtype=torch.long) for p in prompts]
    if any(len(t) == 0 for t in ids):
        raise ValueError("decode: an empty prompt (every prompt needs at least one token)")
    count = len(ids)
    started = time.perf_counter()
    reuse = [prompt_cache.longest_prefix(t) if prompt_cache is not None else (0, None) for t in ids]
    reuse = _with_common_beginning(model, ids, reuse, cache_name, last_only, prompt_cache)

    # 1. encode the prompts, grouped by the length left to encode
    left = [len(t) - shared for t, (shared, _) in zip(ids, reuse)]
    encoded: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in ids]
    last_logits: list[torch.Tensor] = [torch.empty(0)] * count
    for group in _length_groups(sorted(range(count), key=left.__getitem__), left):
        width_shared = max(reuse[i][0] for i in group)
        width_new = max(left[i] for i in group)
        mask = torch.zeros(len(group), width_shared + width_new, dtype=torch.long)
        tokens = torch.full((len(group), width_new), pad_token_id, dtype=torch.long)
        positions = torch.zeros(len(group), width_new, dtype=torch.long)
        for row, i in enumerate(group):
            shared = reuse[i][0]
            mask[row, width_shared - shared : width_shared] = 1
            mask[row, width_shared + width_new - left[i] :] = 1
            tokens[row, width_new - left[i] :] = ids[i][shared:]
            positions[row, width_new - left[i] :] = torch.arange(shared, len(ids[i]))
        cache = DynamicCache(config=model.config)
        if width_shared:  # the shared beginnings, right-aligned before the rest (a gap of padding between is masked)
            example = next(kv for i in group if (kv := reuse[i][1]) is not None)
            for layer, (k, v) in enumerate(example):
                keys = k.new_zeros(len(group), k.size(0), width_shared, k.size(-1))
                values = v.new_zeros(len(group), v.size(0), width_shared, v.size(-1))
                for row, i in enumerate(group):
                    shared, kv = reuse[i]
                    if shared:
                        keys[row, :, width_shared - shared :] = kv[layer][0][:, :shared]
                        values[row, :, width_shared - shared :] = kv[layer][1][:, :shared]
                cache.update(keys, values, layer)
        out = model(
            input_ids=tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
            use_cache=True, **{cache_name: cache}, **last_only,
        )
        cache, real = out[cache_name], mask.bool().to(device)
        for row, i in enumerate(group):
            last_logits[i] = out.logits[row, -1]
            encoded[i] = [(layer.keys[row][:, real[row]], layer.values[row][:, real[row]]) for layer in cache.layers]
        if prompt_cache is not None:
            prompt_cache.reused += sum(reuse[i][0] for i in group)
            prompt_cache.encoded += sum(left[i] for i in group)
    if prompt_cache is not None:
        prompt_cache.entries = list(zip(ids, encoded))

    # 2. the decoding cache. On a CPU, with decode_attention: each prompt's keys and values once (for its n
    # samples) beside a preallocated cache of the generated tokens, per row. Else one preallocated cache
    # of each row's prompt, right-aligned in the first `width` slots, and its generated tokens.
    width = max(len(t) for t in ids)
    prompt_mask = torch.zeros(count, width, dtype=torch.bool)
    for i, t in enumerate(ids):
        prompt_mask[i, width - len(t) :] = True
    stacked = []
    for layer in range(len(encoded[0])):
        k0, v0 = encoded[0][layer]
        keys = k0.new_zeros(count, k0.size(0), width, k0.size(-1))
        values = v0.new_zeros(count, v0.size(0), width, v0.size(-1))
        for i, t in enumerate(ids):
            keys[i, :, width - len(t) :], values[i, :, width - len(t) :] = encoded[i][layer]
        stacked.append((keys, values))
    del encoded
    rows = count * n
    slots = max_new_tokens + (max_new_tokens + lookup if lookup else 0)  # room for fed guesses not kept
    split = (
        device.type == "cpu" and _attends_by_decode_attention(model)
        and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
    )
    if split:
        decoding = dataclasses.replace(
            _Decoding.of_prompts(stacked, prompt_mask, n),  # the prompts kept once, with their additive mask
            no_prompt=None, row_prompt=torch.arange(count, device=device).repeat_interleave(n),
            row_sample=torch.arange(n, device=device).repeat(count),
        )
        cache = StaticCache(config=model.config, max_cache_len=slots)
        generated_from = 0  # the cache's first slot is the first generated token's
    else:
        cache = StaticCache(config=model.config, max_cache_len=width + slots)
        for layer, (keys, values) in enumerate(stacked):
            cache.update(keys.repeat_interleave(n, dim=0), values.repeat_interleave(n, dim=0), layer)
        decoding, generated_from = None, width
    del stacked

    # 3. the steps. Each feeds every row's last token, and with `lookup` the tokens its drafts guess next;
    # the cache is written a slot a fed token, and a slot whose token was not kept is masked from then on
    stepping = time.perf_counter()
    attention = torch.zeros(rows, generated_from + slots, dtype=torch.long, device=device)
    if not split:
        attention[:, :width] = prompt_mask.repeat_interleave(n, dim=0).to(device)
    positions = torch.tensor([len(t) for t in ids], device=device).repeat_interleave(n)
    logits = torch.stack(last_logits).repeat_interleave(n, dim=0)[:, None]  # (rows, fed tokens, vocab)
    draws = row_generators(seeds if seeds is not None else range(count), n) if sampler is not None else None
    may_stop = stop.may_complete(logits.size(-1)).tolist() if stop is not None else None
    guesses = [PromptLookup(ids[r // n].tolist(), lookup_ngram) for r in range(rows)] if lookup else None
    alive = list(range(rows))  # the output row of each batch row
    ended = [False] * rows  # per batch row
    drafts: list[list[int]] = [[] for _ in range(rows)]  # per batch row: the tokens fed after its last one
    outputs: list[list[int]] = [[] for _ in range(rows)]
    filled = 0  # slots of the generated-token cache written
    with _decoding_with(model, decoding):
        while True:
            firsts = sampler.draw(logits[:, 0], draws) if sampler is not None else logits[:, 0].argmax(-1)
            picks, kept = [], []
            for r, token in enumerate(firsts.tolist()):
                reply, guessed, k = outputs[alive[r]], drafts[r], 0
                while not ended[r]:  # the fed guesses the model agrees with, and the token after the last of them
                    if token == eos_token_id:
                        ended[r] = True
                        break
                    reply.append(token)
                    ended[r] = len(reply) >= max_new_tokens or (may_stop is not None and may_stop[token] and stop.is_complete(reply))
                    if ended[r] or k == len(guessed) or guessed[k] != token:
                        break
                    k += 1
                    row_logits = logits[r : r + 1, k]
                    token = int(sampler.draw(row_logits, draws[r : r + 1])[0] if sampler is not None else row_logits.argmax(-1)[0])
                picks.append(token)
                kept.append(k)
            if all(ended):
                break
            if filled:  # the fed guesses not kept leave the cache
                fed = logits.size(1)
                for r, k in enumerate(kept):
                    attention[r, generated_from + filled - fed + 1 + k : generated_from + filled] = 0
                positions = positions + torch.tensor(kept, device=device) + 1
            picks = torch.tensor(picks, device=device)
            if sum(ended) >= max(1, drop_share * len(alive)):
                keep = [r for r, done in enumerate(ended) if not done]
                index = torch.tensor(keep, device=device)
                for layer in cache.layers:
                    if getattr(layer, "keys", None) is not None and layer.keys.numel():
                        layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
                        layer.batch_size = len(keep)
                attention, positions, picks = attention[index], positions[index], picks[index]
                alive = [alive[r] for r in keep]
                draws = [draws[r] for r in keep] if draws is not None else None
                ended = [False] * len(keep)
                if split:
                    decoding = _compacted(decoding, index)
                    _DECODING.set(decoding)
            # what each row feeds: its last token, then (with room left) what its lookup guesses follows it
            drafts = [[] for _ in alive]
            if lookup:
                shortest = min(len(outputs[o]) for o, done in zip(alive, ended) if not done)
                if filled + 1 + lookup + (max_new_tokens - shortest) <= slots:
                    drafts = [[] if done else guesses[o].after(outputs[o], lookup) for o, done in zip(alive, ended)]
            fed = 1 + max(map(len, drafts))
            tokens = torch.full((len(alive), fed), pad_token_id, dtype=torch.long, device=device)
            tokens[:, 0] = picks.masked_fill(torch.tensor(ended, device=device), pad_token_id)
            for r, guessed in enumerate(drafts):
                if guessed:
                    tokens[r, 1 : 1 + len(guessed)] = torch.tensor(guessed, device=device)
            attention[:, generated_from + filled : generated_from + filled + fed] = 1
            out = model(
                input_ids=tokens, attention_mask=attention,
                position_ids=positions[:, None] + torch.arange(fed, device=device), use_cache=True,
                **{cache_name: cache}, **(last_only if fed == 1 else {}),
            )
            logits = out.logits[:, -fed:]
            filled += fed
            if stats is not None:
                stats["steps"] = stats.get("steps", 0) + 1
                stats["row_steps"] = stats.get("row_steps", 0) + len(alive)
                stats["fed"] = stats.get("fed", 0) + fed * len(alive)
    if stats is not None:
        stats["encode_s"] = stats.get("encode_s", 0.0) + stepping - started
        stats["step_s"] = stats.get("step_s", 0.0) + time.perf_counter() - stepping
    return outputs
