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

import hashlib
import inspect
import logging
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.tokenization import decode_completions
from cai_lightning.errors import ConfigError

log = logging.getLogger(__name__)

# The offline critic: 2 blocks, 128 wide (~0.8M parameters + embeddings). The context is long enough
# for a critique prompt quoting a response and its findings.
RANDOM_CRITIC = {"n_layer": 2, "n_head": 2, "n_embd": 128, "n_positions": 1024}


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
            raise ConfigError(f"critic {name!r}: its tokenizer has no EOS token to stop generation on")
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
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # ---------------------------------------------------------------- building
    @classmethod
    def load(cls, name_or_path: str, device: str = "auto") -> Critic:
        """``AutoModelForCausalLM`` + ``AutoTokenizer`` by Hub name or local folder, remote code never
        trusted. bf16 weights on a GPU, fp32 on the CPU. Raises :class:`ConfigError` naming the critic."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, trust_remote_code=False, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32
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
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

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
        )
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            if n > 1 and self._shared_prefill and width > 1:
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
        feeds only the tokens the cache lacks). Same tokens as generating from the repeated prompts
        (a test checks); about 20% faster on a CPU at batch 16 x 2. Returns ``(B * n, T + new)``."""
        from transformers import StaticCache

        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        cache = StaticCache(config=self.model.config, max_cache_len=input_ids.size(1) + settings["max_new_tokens"])
        static = all(type(layer).__name__ == "StaticLayer" for layer in cache.layers)  # plain attention layers
        prefill = self.model(
            input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=position_ids[:, :-1],
            use_cache=True, **({self._cache_name: cache} if static else {}),
        )
        cache = prefill[self._cache_name]
        if static:  # StaticCache has no batch_repeat_interleave: repeat its preallocated tensors
            for layer in cache.layers:
                layer.keys = layer.keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)
                layer.batch_size *= n
        else:
            cache.batch_repeat_interleave(n)
        return self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0),
            attention_mask=attention_mask.repeat_interleave(n, dim=0),
            **{self._cache_name: cache},
            **settings,
        )


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
    """

    def __init__(self, temperature: float, top_k: int, top_p: float) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k or scores.size(-1), scores.size(-1))
        best, tokens = scores.topk(k, dim=-1)  # (B, k), best first
        probs = (best / self.temperature).softmax(-1)
        # a token is kept if the tokens better than it hold less than top_p: the best one always is
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p, 0.0)
        drawn = tokens.gather(-1, torch.multinomial(probs, 1))  # multinomial renormalises
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def critic_identity(name_or_path: str | None, seed: int, vocab_size: int) -> dict:
    """What the stage's cache key records about the critic, known *without* loading it (so a cached stage
    costs no model load): a local folder by the hash of its files, a Hub model by name, the random critic
    by its size, seed and vocabulary size (its BPE is trained on the rows, which the key covers anyway)."""
    if name_or_path is None:
        return {"name": "random-gpt2", "config": RANDOM_CRITIC, "seed": seed, "vocab_size": vocab_size}
    path = Path(name_or_path).expanduser()
    return {"name": name_or_path, "weights": _folder_digest(path) if path.is_dir() else None}


def _folder_digest(folder: Path) -> str:
    """A hash of every file in a local model folder (weights, config, tokenizer): re-saved weights change
    it, a copied folder does not. About a second per GB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with path.open("rb") as f:
            digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
