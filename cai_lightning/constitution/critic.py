"""The critic: the causal LM that writes responses, critiques and revisions for the constitution stage.

By default it is the pretrained model being fine-tuned (as in the seed project); any Hugging Face causal
LM by name or folder otherwise, prompted through its chat template when it has one. Offline, with no
pretrained model at all, it is a tiny randomly initialised GPT-2 (see :meth:`Critic.random`), which
writes noise: the acceptance gate keeps that noise out of the data (README, "What the constitution
stage can and cannot do").

Generation is batched, by :func:`~cai_lightning.generation.decode` (prompts encoded in groups of similar
length, a revision prompt encoded from where it leaves its critique prompt, each reply ending at EOS or at its
code block's closing fence, finished replies dropped from the batch); transformers' ``generate`` with the
prompts left-padded into one preallocated KV cache is the other decoder (``decoder="transformers"``), kept
for models ``decode`` cannot run and to measure against.
"""

from __future__ import annotations

import inspect
import logging
from typing import Literal

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.tokenization import decode_completions
from cai_lightning.devices import inference_dtype, resolve_device
from cai_lightning.errors import ConfigError
from cai_lightning.generation import (
    FencedBlockEnd, PromptCache, TopKTopPSampler, _Decoding, _decoding_with, decode, supports_decode,
)
from cai_lightning.pretrained import load_causal_lm, model_identity, resolve_pretrained
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
        self._decodes = supports_decode(model)
        self.prompt_cache = PromptCache()  # the last call's prompts, for a revision prompt that extends one
        self.decode_stats: dict[str, float] = {}  # where the own decoder's time went (generation.decode)

    # ---------------------------------------------------------------- building
    @classmethod
    def load(cls, name_or_path: str, device: str = "auto") -> Critic:
        """The model (:func:`~cai_lightning.pretrained.load_causal_lm`, as every causal LM here) and its
        ``AutoTokenizer``, by Hub name, local folder, GGUF file or short name
        (:func:`~cai_lightning.pretrained.resolve_pretrained`; a GGUF is converted once into the cache), remote
        code never trusted. Weights in :func:`~cai_lightning.devices.inference_dtype` (bf16 on a GPU and on a CPU
        with native bf16, else fp32). Raises :class:`ConfigError` naming the critic."""
        from transformers import AutoTokenizer

        device = resolve_device(device)
        try:
            folder = resolve_pretrained(name_or_path, "data.revise.critic")
        except ConfigError as err:  # it names the flag already
            raise ConfigError(f"could not load the critic model {name_or_path!r}: {err}") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
            model = load_causal_lm(folder, inference_dtype(device))
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

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """``prompts`` as the token ids the critic reads, each through :meth:`as_prompt`."""
        return self.tokenizer([self.as_prompt(p) for p in prompts], add_special_tokens=False)["input_ids"]

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
        stop_after_code_block: bool = False,
        decoder: Literal["own", "transformers"] = "own",
        lookup: int = 0,
    ) -> list[list[str]]:
        """``n`` completions per prompt (generated text only, cut at EOS), in one batched call.

        Sampling is seeded with ``seed`` for this call alone, so a batch's output depends only on its
        prompts and the seed (what makes a killed stage resume to the same result); with the ``own``
        decoder each prompt's samples depend on ``seed`` and the prompt's place only. Prompts longer than
        the context minus ``max_new_tokens`` (but at least half the context) keep their tail, where the
        request is, and are counted; what is left of the context bounds the new tokens.
        ``stop_after_code_block``: a reply ends at its first fenced code block's closing fence (for callers
        that read that block only). ``decoder``: :func:`~cai_lightning.generation.decode`, or transformers'
        ``generate`` (the decoder before it; also what runs a model ``decode`` cannot). ``lookup``: the own
        decoder's prompt-lookup guesses a step (:func:`~cai_lightning.generation.decode`; 0: none).
        """
        if not prompts:
            return []
        budget = max(self.context - max_new_tokens, self.context // 2)  # a small-context critic writes less
        encoded = self.encode(prompts)
        self.prompts_truncated += sum(len(ids) > budget for ids in encoded)
        batch = PadCollator(self.pad_id)([{"input_ids": ids[-budget:]} for ids in encoded])  # left-padded (B, T)
        width = batch["input_ids"].size(1)
        new_tokens = min(max_new_tokens, self.context - width)
        if new_tokens < 1:
            return [[""] * n for _ in prompts]
        device = self.model.device
        sampler = TopKTopPSampler(temperature, top_k, top_p) if do_sample else None
        stop = FencedBlockEnd(self.tokenizer, width) if stop_after_code_block else None
        if decoder == "own" and self._decodes:
            generated = decode(
                self.model, [ids[-budget:] for ids in encoded], max_new_tokens=new_tokens, n=n,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.pad_id, sampler=sampler,
                seeds=[hash((seed, i)) & ((1 << 63) - 1) for i in range(len(prompts))], stop=stop,
                prompt_cache=self.prompt_cache, lookup=lookup, stats=self.decode_stats,
            )
            return decode_completions(self.tokenizer, generated, n)
        input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # sampling is done by TopKTopPSampler, whose pick greedy decoding then takes (see there)
        settings = dict(
            max_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            top_k=None,
            logits_processor=LogitsProcessorList([sampler] if sampler else []),
            stopping_criteria=[stop] if stop else None,
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
