"""The critic: the causal LM that writes responses, critiques and revisions for the constitution stage.

By default it is the pretrained model being fine-tuned (as in the seed project); any Hugging Face causal
LM by name or folder otherwise, prompted through its chat template when it has one. Offline, with no
pretrained model at all, it is a tiny randomly initialised GPT-2 (see :meth:`Critic.random`), which
writes noise: the acceptance gate keeps that noise out of the data (README, "What the constitution
stage can and cannot do").

Generation is batched: prompts are left-padded so every row's next token sits in the last column, and
``generate`` reuses the KV cache, so a batch of 16 costs little more per step than a batch of 1.
"""

from __future__ import annotations

import inspect
import logging
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AttentionInterface, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.tokenization import decode_completions
from cai_lightning.devices import inference_dtype, resolve_device
from cai_lightning.errors import ConfigError
from cai_lightning.generation import TopKTopPSampler
from cai_lightning.pretrained import model_identity, resolve_pretrained
from cai_lightning.prompts import chat_prompt

log = logging.getLogger(__name__)

# The offline critic: 2 blocks, 128 wide (~0.8M parameters + embeddings). The context is long enough
# for a critique prompt quoting a response and its findings. GELU's tanh approximation as one kernel
# (GPT-2's own `gelu_new` is five elementwise ops, ~5% of a batched decoding step on a CPU).
RANDOM_CRITIC = {"n_layer": 2, "n_head": 2, "n_embd": 128, "n_positions": 1024, "activation_function": "gelu_pytorch_tanh"}


class Critic:
    """A causal LM with its tokenizer, generating completions for batches of prompt texts.

    Args:
        model: Any ``PreTrainedModel`` with ``generate``.
        tokenizer: Its tokenizer. A missing pad token is fine: generation pads with EOS under an
            attention mask (the critic is never trained, so the pad == EOS pitfall does not apply).
        name: What to call it in messages.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                f"data.revise.critic={name!r}: its tokenizer has no EOS token, so no critique or revision could end; "
                "use a model whose tokenizer has one (an instruct model's chat template ends each turn with it)"
            )
        self.name = name
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        config = model.config
        self.context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 2048
        self.prompts_truncated = 0  # prompts cut from the left to fit the context (counted, reported)
        # encode a prompt once for its n samples; models whose cache cannot be repeated fall back
        self._shared_prefill = getattr(model, "_supports_default_dynamic_cache", lambda: False)()
        # transformers 5.24 renamed the KV cache argument and output field `past_key_values` -> `cache`
        parameters = inspect.signature(model.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in parameters

    # ---------------------------------------------------------------- building
    @classmethod
    def load(cls, name_or_path: str, device: str = "auto", cache_dir: str | Path | None = None) -> Critic:
        """``AutoModelForCausalLM`` + ``AutoTokenizer`` by Hub name, local folder, GGUF file or short name
        (:func:`~cai_lightning.pretrained.resolve_pretrained`; a GGUF is converted once into ``cache_dir``),
        remote code never trusted. Weights in :func:`~cai_lightning.devices.inference_dtype` (bf16 on a GPU and
        on a CPU with native bf16, else fp32). Raises :class:`ConfigError`
        naming the critic."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(device)
        try:
            folder = resolve_pretrained(name_or_path, "data.revise.critic", cache_dir)
        except ConfigError as err:  # it names the flag already
            raise ConfigError(f"could not load the critic model {name_or_path!r}: {err}") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                folder, trust_remote_code=False, dtype=inference_dtype(device)
            )
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(
                f"could not load the critic model {name_or_path!r} (data.revise.critic, or model.pretrained when "
                f"that is null): {err}"
            ) from err
        return cls(model.to(device), tokenizer, name_or_path)

    @classmethod
    def random(cls, tokenizer: PreTrainedTokenizerBase, seed: int, device: str = "auto") -> Critic:
        """A GPT-2 of :data:`RANDOM_CRITIC` size, randomly initialised from ``seed`` (the offline default)."""
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            **RANDOM_CRITIC,
        )
        with torch.random.fork_rng(devices=[]):  # same weights for the same seed, global RNG untouched
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        return cls(model.to(resolve_device(device)), tokenizer, "random-gpt2")

    # ---------------------------------------------------------------- generating
    def as_prompt(self, text: str) -> str:
        """``text`` as one user turn of the critic's chat template, or as is for a plain LM."""
        return chat_prompt(self.tokenizer, text) if getattr(self.tokenizer, "chat_template", None) else text

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        n: int = 1,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_k: int = 50,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[list[str]]:
        """``n`` completions per prompt (generated text only, cut at EOS), in one batched ``generate``.

        Sampling is seeded with ``seed`` for this call alone, so a batch's output depends only on its
        prompts and the seed (what makes a killed stage resume to the same result). Prompts longer than
        the context minus ``max_new_tokens`` (but at least half the context) keep their tail, where the
        request is, and are counted; what is left of the context bounds the new tokens.
        """
        if not prompts:
            return []
        budget = max(self.context - max_new_tokens, self.context // 2)  # a small-context critic writes less
        encoded = self.tokenizer([self.as_prompt(p) for p in prompts], add_special_tokens=False)["input_ids"]
        self.prompts_truncated += sum(len(ids) > budget for ids in encoded)
        batch = PadCollator(self.pad_id)([{"input_ids": ids[-budget:]} for ids in encoded])  # left-padded (B, T)
        width = batch["input_ids"].size(1)
        new_tokens = min(max_new_tokens, self.context - width)
        if new_tokens < 1:
            return [[""] * n for _ in prompts]
        device = self.model.device
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # sampling is done by TopKTopPSampler, whose pick greedy decoding then takes (see there)
        sampler = TopKTopPSampler(temperature, top_k, top_p) if do_sample else None
        settings = dict(
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            top_k=None,
            logits_processor=LogitsProcessorList([sampler] if sampler else []),
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
            use_cache=True,
            # with a static cache on a GPU, generate would torch.compile the forward pass, again for every
            # new batch shape (each chunk has its own): measured on an H100, slower than not batching at all
            disable_compile=True,
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            # one sequence: the shared prefill's extra forward pass costs more than decode_attention saves
            if self._shared_prefill and width > 1 and len(prompts) * n > 1:
                out = self._generate_from_shared_prefill(input_ids, attention_mask, n, settings)
            else:
                # a preallocated KV cache: no growing torch.cat per step (~15% of a CPU step at batch 32);
                # transformers ignores it, with a warning, for models that cannot use one
                out = self.model.generate(
                    input_ids=input_ids.repeat_interleave(n, dim=0),
                    attention_mask=attention_mask.repeat_interleave(n, dim=0),
                    cache_implementation="static", **settings,
                )  # (B * n, T + new)
        return decode_completions(self.tokenizer, out[:, width:].tolist(), n)

    def _generate_from_shared_prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, settings: dict
    ) -> torch.Tensor:
        """``n`` samples per prompt with the prompt encoded once. ``generate(num_return_sequences=n)``
        copies each prompt ``n`` times *before* the forward pass, so a long revision prompt is encoded
        ``n`` times over; here all but its last token go through the model once, into a preallocated
        (static) KV cache whose rows are then repeated ``n``-fold, and ``generate`` goes on from it (it
        feeds only the tokens the cache lacks), decoding with :func:`decode_attention`. Same tokens as
        generating from the repeated prompts (a test checks). Returns ``(B * n, T + new)``."""
        from transformers import StaticCache

        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        cache = StaticCache(config=self.model.config, max_cache_len=input_ids.size(1) + settings["max_new_tokens"])
        static = all(type(layer).__name__ == "StaticLayer" for layer in cache.layers)  # plain attention layers
        prefill = self.model(
            input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=position_ids[:, :-1],
            use_cache=True, **({self._cache_name: cache} if static else {}),
            **({"logits_to_keep": 1} if self._logits_to_keep else {}),  # its logits are not used at all
        )
        cache = prefill[self._cache_name]
        decoding = None
        if static:
            # on a GPU, cutting the cache at every step would give cuDNN's attention a new shape per step,
            # each planned anew (measured on an H100: ~100 ms a step); its reads are no bottleneck there
            if input_ids.device.type == "cpu":
                decoding = _Decoding.of(cache, attention_mask[:, :-1], n)
            for layer in cache.layers:  # StaticCache has no batch_repeat_interleave: repeat its tensors
                layer.keys = layer.keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)
                layer.batch_size *= n
        else:
            cache.batch_repeat_interleave(n)
        with _decoding_with(self.model, decoding):
            return self.model.generate(
                input_ids=input_ids.repeat_interleave(n, dim=0),
                attention_mask=attention_mask.repeat_interleave(n, dim=0),
                **{self._cache_name: cache},
                **settings,
            )


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
    """

    n: int
    prompts: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    prompt_mask: torch.Tensor | None = None
    no_prompt: torch.Tensor | None = None

    @classmethod
    def of(cls, cache, prompt_mask: torch.Tensor, n: int) -> _Decoding:
        """From the static cache just filled with the prompts (before its rows are repeated)."""
        keys = cache.layers[0].keys
        if n == 1 or not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
            return cls(n)
        width, real = prompt_mask.size(1), prompt_mask.bool()
        mask = torch.zeros(real.size(0), 1, 1, width, dtype=keys.dtype, device=keys.device)
        mask.masked_fill_(~real[:, None, None, :], float("-inf"))
        prompts = [(layer.keys[:, :, :width].contiguous(), layer.values[:, :, :width].contiguous()) for layer in cache.layers]
        return cls(n, prompts, mask, ~real.any(-1).repeat_interleave(n)[:, None, None, None])


_DECODING: ContextVar[_Decoding | None] = ContextVar("cai_lightning_decoding", default=None)


@contextmanager
def _decoding_with(model: PreTrainedModel, decoding: _Decoding | None):
    """Decode with :func:`decode_attention` for the duration, where the model runs transformers' SDPA."""
    previous = model.config._attn_implementation
    if decoding is None or previous != "sdpa" or not model._can_set_attn_implementation():
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
    filling ends. With ``n`` samples per prompt, the prompt's keys and values (the same ``n``
    times over) are moreover attended once per prompt with the ``n`` queries stacked, the generated
    tokens per sample, and the two partial results merged by their log-sum-exp, as flash attention merges
    blocks. Measured on 2 cores (offline critic, batch 16): response generation 2.72 -> 2.14 s, two
    revisions per row 5.27 -> 4.61 s over cutting alone. Anything else (a query of more than one token, no
    boolean mask, soft-capping, training) is transformers' SDPA unchanged.
    """
    decoding = _DECODING.get()
    if (
        decoding is None or query.size(2) != 1 or attention_mask is None or attention_mask.dtype != torch.bool
        or module.training or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    rows, heads, _, dim = query.shape
    mask = attention_mask.expand(rows, 1, 1, -1)  # True: attend
    end = int(mask[0, 0, 0].nonzero()[-1]) + 1  # where the filling ends: generated tokens are attended by every row
    if decoding.prompts is None or key.size(1) != heads:  # grouped-query attention: cut only
        return sdpa_attention_forward(
            module, query, key[:, :, :end], value[:, :, :end], mask[..., :end], dropout=dropout, scaling=scaling, **kwargs
        )
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu  # also returns the log-sum-exp
    prompt_keys, prompt_values = decoding.prompts[module.layer_idx]
    width, n = prompt_keys.size(2), decoding.n
    scaling = dim**-0.5 if scaling is None else scaling
    # the prompt: each prompt's n queries stacked, (B, H, n, D), against its keys (B, H, P, D), once
    stacked = query.view(rows // n, n, heads, dim).transpose(1, 2)
    on_prompt, lse_prompt = flash(stacked, prompt_keys, prompt_values, attn_mask=decoding.prompt_mask, scale=scaling)
    on_prompt = on_prompt.transpose(1, 2).reshape(rows, heads, 1, dim)
    lse_prompt = lse_prompt.transpose(1, 2).reshape(rows, heads, 1, 1)
    # the generated tokens (and the prompt's last), per sample
    generated_mask = torch.zeros(rows, 1, 1, end - width, dtype=query.dtype, device=query.device)
    generated_mask.masked_fill_(~mask[..., width:end], float("-inf"))
    on_generated, lse_generated = flash(
        query, key[:, :, width:end], value[:, :, width:end], attn_mask=generated_mask, scale=scaling
    )
    # the softmax over both parts is each part's softmax weighted by its share of the total mass; a
    # prompt that is all padding has none (the kernel reports 0 for a row it masks whole, not -inf)
    lse_prompt = lse_prompt.masked_fill(decoding.no_prompt, float("-inf"))
    share = torch.sigmoid(lse_prompt - lse_generated.unsqueeze(-1)).to(query.dtype)  # the kernel's lse is fp32
    out = on_generated + (on_prompt - on_generated) * share
    return out.transpose(1, 2), None


AttentionInterface.register(DECODE_ATTENTION, decode_attention)
AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


def critic_identity(name_or_path: str | None, seed: int, vocab_size: int) -> dict:
    """What the stage's cache key records about the critic, known *without* loading it (so a cached stage
    costs no model load): a local folder by the hash of its files, a GGUF file or short name by the file's
    hash (not converted here), a Hub model by name, the random critic by its size, seed and vocabulary
    size (its BPE is trained on the rows, which the key covers anyway)."""
    if name_or_path is None:
        return {"name": "random-gpt2", "config": RANDOM_CRITIC, "seed": seed, "vocab_size": vocab_size}
    try:
        return model_identity(name_or_path, "data.revise.critic")
    except ConfigError as err:  # a critic that cannot exist fails here, before any work, as Critic.load would
        raise ConfigError(f"could not load the critic model {name_or_path!r}: {err}") from err
