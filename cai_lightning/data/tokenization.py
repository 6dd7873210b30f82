"""Tokenizers and prompt-masked examples.

Masking is done by construction (litgpt's way), never by searching for a response marker: the prompt and
the target are tokenized *separately* and concatenated, so the boundary is exact even where BPE would
merge across it. EOS is appended to the target and stays a trainable label; padding uses a dedicated
``[PAD]`` token so that masking padding never masks EOS (the "model never learns to stop" bug, trl #1623).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable

from cai_lightning.errors import ConfigError
from cai_lightning.pretrained import resolve_pretrained
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that cross-entropy skips
EOS = "<|endoftext|>"  # GPT-2's end-of-text, also its BOS/UNK
PAD = "[PAD]"


def load_pretrained_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` plus a real ``[PAD]`` token when the tokenizer has none (GPT-2 has none).

    ``name_or_path`` is anything :func:`~cai_lightning.pretrained.resolve_pretrained` takes (a GGUF file or
    short name is converted once into a folder of the cache). Remote code is never trusted. Raises
    :class:`ConfigError` when it cannot be loaded.
    """
    try:
        # data.tokenizer is linked from model.pretrained in the CLI: the user set one of the two
        folder = resolve_pretrained(name_or_path, "model.pretrained / data.tokenizer")
    except ConfigError as err:  # it names the flag already
        raise ConfigError(f"could not load tokenizer {name_or_path!r}: {err}") from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"could not load tokenizer {name_or_path!r} (model.pretrained / data.tokenizer): {err}"
        ) from err
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD})
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, wrapped as a GPT-2 tokenizer.

    Special tokens match GPT-2's: ``<|endoftext|>`` as EOS/BOS/UNK, plus ``[PAD]``. Byte-level means
    every string is encodable, so no input is ever mapped to UNK.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is unknown
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(tokenizer_object=backend, pad_token=PAD)


def save_and_reload(tokenizer: PreTrainedTokenizerBase, directory: Path) -> PreTrainedTokenizerBase:
    """Save with ``save_pretrained`` and load back with ``from_pretrained``: what is used is what is cached."""
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def build_example(
    prompt_ids: list[int], target_ids: list[int], eos_id: int, max_length: int, mask_prompt: bool = True
) -> dict[str, list[int]] | None:
    """Concatenate prompt and target (+ EOS) into ``input_ids`` and ``labels``.

    ``labels`` are ``-100`` over the prompt when ``mask_prompt``. When the whole sequence exceeds
    ``max_length`` the target's tail is cut (EOS first). Returns ``None`` when not even one target token
    fits, so the caller can drop and count the example instead of training on a label-free row (NaN loss).
    """
    target = target_ids + [eos_id]
    room = max_length - len(prompt_ids)
    if room < 1:
        return None
    target = target[:room]
    prompt_labels = [IGNORE_INDEX] * len(prompt_ids) if mask_prompt else list(prompt_ids)
    return {"input_ids": prompt_ids + target, "labels": prompt_labels + target}


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the vocabulary (token → id), the part a checkpoint's weights depend on."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def decode_completions(tokenizer: PreTrainedTokenizerBase, generated: list[list[int]], n: int) -> list[list[str]]:
    """Generated ids, ``B * n`` rows with the prompt already cut off (``generate``'s order: a prompt's
    ``n`` sequences are adjacent), as text cut at the first EOS, ``n`` per prompt."""
    eos = tokenizer.eos_token_id
    texts = [tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids, skip_special_tokens=True) for ids in generated]
    return [texts[i : i + n] for i in range(0, len(texts), n)]
