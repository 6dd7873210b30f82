"""The decoding loop (cai_lightning.generation.decode): what it writes is what transformers' generate writes,
whatever it does to get there faster (grouped encoding, reused prompt beginnings, stops, dropped rows); and
decode_attention, the attention of a decoding step over a preallocated cache."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from cai_lightning.generation import (
    FencedBlockEnd, PromptCache, PromptLookup, TopKTopPSampler, _length_groups, decode, supports_decode,
)

EOS, PAD = 2, 0


def gpt2(attention="sdpa"):  # learned positions, as many key/value heads as query heads
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_layer=2, n_head=2, n_embd=64, n_positions=256, bos_token_id=1, eos_token_id=EOS)
    config._attn_implementation = attention
    return GPT2LMHeadModel(config).eval()


def llama(attention="sdpa"):  # rotary positions, grouped-query attention (as SmolLM2 and Qwen2.5)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )
    config._attn_implementation = attention
    return LlamaForCausalLM(config).eval()


def llama_eager():  # not SDPA: no decode_attention, each row's prompt in the one preallocated cache
    return llama("eager")


MODELS = [gpt2, llama, llama_eager]


def prompts(*lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 100, (length,), generator=g).tolist() for length in lengths]


def generate_one(model, prompt, max_new_tokens):
    """transformers' greedy generate on one prompt alone: the reference."""
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long), max_new_tokens=max_new_tokens,
        do_sample=False, eos_token_id=EOS, pad_token_id=PAD,
    )[0, len(prompt) :].tolist()
    return out[: out.index(EOS)] if EOS in out else out


@pytest.mark.parametrize("make", MODELS)
def test_greedy_is_generate_on_each_prompt_alone(make):
    model = make()
    assert supports_decode(model)
    batch = prompts(5, 17, 40, 41, 9, 60)  # three length groups, left padding in each
    expected = [generate_one(model, p, 12) for p in batch]
    got = decode(model, batch, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD, n=2)
    assert got == [e for e in expected for _ in range(2)]
    # rows dropped as soon as one ends, or never: the same text
    for share in (0.01, 2.0):
        assert decode(model, batch, max_new_tokens=12, eos_token_id=EOS, pad_token_id=PAD, drop_share=share) == expected


@pytest.mark.parametrize("make", MODELS)
def test_a_prompt_that_extends_the_last_calls_prompt_is_encoded_from_where_they_part(make):
    model = make()
    first = prompts(30, 45, 20)
    cache = PromptCache(min_shared=8)
    decode(model, first, max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD, prompt_cache=cache)
    assert cache.reused == 0 and cache.encoded == 95
    longer = [p + [7, 8, 9, 10] for p in first] + prompts(12, seed=5)  # the last shares nothing
    got = decode(model, longer, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, prompt_cache=cache)
    assert cache.reused == 95 and cache.encoded == 95 + 3 * 4 + 12
    assert got == [generate_one(model, p, 10) for p in longer]
    assert [len(key) for key, _ in cache.entries] == [34, 49, 24, 12]  # now holds this call's prompts


@pytest.mark.parametrize("make", MODELS)
def test_a_beginning_all_prompts_share_is_encoded_once(make):
    model = make()
    system = prompts(20, seed=3)[0]
    batch = [system + tail for tail in prompts(7, 30, 1, 12)]
    cache = PromptCache()
    got = decode(model, batch, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, prompt_cache=cache)
    assert got == [generate_one(model, p, 10) for p in batch]
    assert cache.reused == 4 * 20 and cache.encoded == 20 + 7 + 30 + 1 + 12
    # an earlier call's longer match wins over the common beginning
    again = decode(model, [p + [5, 6] for p in batch], max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, prompt_cache=cache)
    assert again == [generate_one(model, p + [5, 6], 10) for p in batch]
    assert cache.reused == 80 + sum(map(len, batch)) and cache.encoded == 70 + 4 * 2
    # fewer than MIN_SHARED tokens in common: each prompt encoded whole
    short = [system[:10] + tail for tail in prompts(7, 30, seed=4)]
    fresh = PromptCache()
    assert decode(model, short, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD, prompt_cache=fresh) == [
        generate_one(model, p, 5) for p in short
    ]
    assert fresh.reused == 0 and fresh.encoded == 17 + 40


@pytest.mark.parametrize("make", MODELS)
def test_samples_depend_on_their_own_seed_only(make):
    model = make()
    batch = prompts(6, 25, 11)
    sampler = TopKTopPSampler(0.9, 20, 0.95)
    together = decode(model, batch, max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, n=3, sampler=sampler, seeds=[7, 8, 9])
    reordered = decode(model, batch[::-1], max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, n=3, sampler=sampler, seeds=[9, 8, 7])
    assert together == reordered[6:9] + reordered[3:6] + reordered[0:3]
    alone = decode(model, batch[1:2], max_new_tokens=10, eos_token_id=EOS, pad_token_id=PAD, n=3, sampler=sampler, seeds=[8])
    assert alone == together[3:6]
    assert len({tuple(s) for s in together[3:6]}) > 1  # three samples, not one three times


@pytest.mark.parametrize("make", MODELS)
def test_lookup_writes_what_decoding_a_token_a_step_writes(make):
    model = make()
    batch = prompts(5, 17, 40, 41, 9, 60)
    expected = [generate_one(model, p, 40) for p in batch]
    for share in (0.25, 2.0):
        stats = {}
        got = decode(model, batch, max_new_tokens=40, eos_token_id=EOS, pad_token_id=PAD, n=2, lookup=4, drop_share=share, stats=stats)
        assert got == [e for e in expected for _ in range(2)]
        assert stats["fed"] > stats["row_steps"]  # guesses were fed
    sampler = TopKTopPSampler(0.9, 20, 0.95)
    kw = dict(max_new_tokens=40, eos_token_id=EOS, pad_token_id=PAD, n=3, sampler=sampler, seeds=[7, 8, 9, 1, 2, 3])
    assert decode(model, batch, lookup=4, **kw) == decode(model, batch, **kw)  # each kept token drawn as it would be


def test_lookup_takes_fewer_steps_where_the_reply_repeats():
    model = gpt2()  # its greedy replies to these prompts repeat a token
    batch = prompts(5, 17, 40, 41, 9, 60)
    plain, looked = {}, {}
    decode(model, batch, max_new_tokens=40, eos_token_id=EOS, pad_token_id=PAD, stats=plain)
    decode(model, batch, max_new_tokens=40, eos_token_id=EOS, pad_token_id=PAD, lookup=4, stats=looked)
    assert plain["steps"] == 39 and looked["steps"] <= 25


def test_prompt_lookup_guesses_what_followed_the_latest_occurrence():
    lookup = PromptLookup([1, 2, 3, 4, 9, 2, 3, 5, 6], ngram=2)
    assert lookup.after([2, 3], 3) == [5, 6, 2]  # "2 3" last occurred before "5 6", then the reply's own "2"
    assert lookup.after([2, 3, 7], 3) == []  # "3 7" and "7" occur nowhere before
    assert lookup.after([2, 3, 7, 9], 2) == [2, 3]  # no "7 9" before; "9" is followed by "2 3"
    assert PromptLookup([4, 4], ngram=2).after([], 5) == [4]


class Tokens:
    """A tokenizer stand-in: token t is the text PIECES[t] (enough for FencedBlockEnd)."""

    PIECES = {3: "```python\n", 4: "x = 1\n", 5: "```", 6: " more"}

    def __len__(self):
        return 100

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.PIECES.get(t, "?") for t in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.PIECES.get(t, "?") for t in ids]


def test_a_reply_ends_at_its_code_blocks_closing_fence():
    stop = FencedBlockEnd(Tokens(), 0)
    assert stop.may_complete(100).nonzero().flatten().tolist() == [3, 5]
    assert stop.is_complete([3, 4, 5]) and not stop.is_complete([3, 4]) and not stop.is_complete([5])

    model = llama()
    script = {0: 3, 1: 4, 2: 5}  # after a prompt of 4 tokens: a block, then " more" until the token limit

    def forward_hook(module, args, kwargs, output):
        positions = kwargs["position_ids"][:, -1].tolist()
        logits = torch.full_like(output.logits[:, -1:], -1e9)
        for r, position in enumerate(positions):
            logits[r, 0, script.get(position - 3, 6)] = 0.0
        output.logits = logits
        return output

    handle = model.register_forward_hook(forward_hook, with_kwargs=True)
    try:
        full = decode(model, prompts(4), max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD)
        stopped = decode(model, prompts(4), max_new_tokens=8, eos_token_id=EOS, pad_token_id=PAD, stop=stop)
    finally:
        handle.remove()
    assert full == [[3, 4, 5, 6, 6, 6, 6, 6]] and stopped == [[3, 4, 5]]


def test_length_groups_bound_the_padding():
    lengths = [10, 11, 12, 40, 41, 200]
    groups = _length_groups(list(range(6)), lengths)
    assert groups == [[0, 1, 2], [3, 4], [5]]
    for group in groups:
        assert len(group) * max(lengths[i] for i in group) <= 1.25 * sum(lengths[i] for i in group)
    assert [len(g) for g in _length_groups(list(range(40)), [5] * 40)] == [16, 16, 8]


def test_sampler_draws_from_the_distribution_transformers_samples_from():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 0.9, -3.0, 0.0]]).repeat(40_000, 1)
    ids = torch.zeros(40_000, 1, dtype=torch.long)
    expected = logits[:1]
    for warp in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(5), TopPLogitsWarper(0.9)):
        expected = warp(ids[:1], expected)
    expected = expected.softmax(-1)[0]  # what generate(do_sample=True) draws from
    torch.manual_seed(0)
    scores = TopKTopPSampler(0.8, 5, 0.9)(ids, logits)
    assert ((scores == 0).sum(-1) == 1).all() and (scores.isneginf().sum(-1) == 7).all()  # one token per row
    drawn = torch.bincount(scores.argmax(-1), minlength=8) / 40_000
    assert (drawn[expected == 0] == 0).all()  # outside top-k / top-p: never drawn
    assert torch.allclose(drawn, expected, atol=0.01), (drawn, expected)


@pytest.mark.parametrize("fold_groups", [True, False])
@pytest.mark.parametrize(("n", "kv_heads"), [(2, 4), (1, 4), (3, 2), (1, 2)])
def test_decode_attention_is_sdpa_over_the_whole_static_cache(n, kv_heads, fold_groups):
    """decode_attention reads less (the cache cut where its filling ends; with n samples, each prompt once)
    and must compute what transformers' SDPA computes over the whole preallocated cache, masked."""
    from cai_lightning.generation import _DECODING, _Decoding, decode_attention

    torch.manual_seed(0)
    heads, dim, width, filled, capacity = 4, 8, 7, 5, 20  # prompts of 8 tokens (7 cached before decoding)
    real = torch.tensor([7, 3, 0])  # tokens of each prompt before its last; the third prompt is all padding there
    prompt_mask = torch.arange(width) >= width - real[:, None]  # left padding, (prompts, width)
    keys, values = torch.randn(2, 3, kv_heads, capacity, dim)
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=values)])
    decoding = dataclasses.replace(_Decoding.of(cache, prompt_mask, n), fold_groups=fold_groups)
    assert (decoding.prompts is not None) == (n > 1)  # the prompt is shared only where there is something to share
    keys, values = keys.repeat_interleave(n, 0), values.repeat_interleave(n, 0)
    keys[:, :, width:], values[:, :, width:] = torch.randn(2, 3 * n, kv_heads, capacity - width, dim)  # per sample
    mask = torch.zeros(3 * n, 1, 1, capacity, dtype=torch.bool)
    mask[..., :width] = prompt_mask.repeat_interleave(n, 0)[:, None, None]
    mask[..., width : width + filled] = True  # the prompt's last token and 4 generated; the rest not yet written
    query = torch.randn(3 * n, heads, 1, dim)
    groups = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), attn_mask=mask
    ).transpose(1, 2)
    module = SimpleNamespace(layer_idx=0, training=False, is_causal=True, num_key_value_groups=groups)
    token = _DECODING.set(decoding)
    try:
        out, _ = decode_attention(module, query, keys, values, mask)
    finally:
        _DECODING.reset(token)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
