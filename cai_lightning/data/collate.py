"""Batches: dynamic padding and length-grouped ordering."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from cai_lightning.data.tokenization import IGNORE_INDEX


@dataclass(frozen=True)
class PadCollator:
    """Pad a list of examples to the longest one in the batch.

    Training examples (``input_ids`` + ``labels``) are padded on the right: ``input_ids`` with
    ``pad_id``, ``labels`` with ``-100`` on their own (never by comparing ids with the pad id, so EOS
    stays a label), ``attention_mask`` 0 on padding. Prompt-only examples for generation (no
    ``labels``) are padded on the *left*, so every prompt ends where generation starts.

    ``pad_to_multiple_of`` rounds the padded length up (e.g. 8 for tensor cores).
    Returns ``{"input_ids", "attention_mask"[, "labels"]}`` as ``(B, T)`` int64 tensors.
    """

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        if self.pad_to_multiple_of:
            longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        has_labels = "labels" in examples[0]
        batch = {
            "input_ids": torch.full((len(examples), longest), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(examples), longest), dtype=torch.long),
        }
        if has_labels:
            batch["labels"] = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            span = slice(0, n) if has_labels else slice(longest - n, longest)
            batch["input_ids"][row, span] = torch.as_tensor(example["input_ids"])
            batch["attention_mask"][row, span] = 1
            if has_labels:
                batch["labels"][row, span] = torch.as_tensor(example["labels"])
        return batch


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order in which neighbours have similar lengths, to cut padding.

    As in Hugging Face's sampler of the same name: shuffle, cut into mega-batches of
    ``mega_batch_factor * batch_size`` indices, sort each by length (longest first), and shuffle the
    order of the resulting batches so the epoch does not run from long to short (a short last
    batch stays last, keeping our batches aligned with the DataLoader's). Seeded per epoch
    (``set_epoch``), so runs are reproducible and resumable.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = self.mega_batch_factor * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        # Only the very last batch can be short; keep it last so DataLoader batches stay aligned with ours.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[b]
        for batch in tail:
            yield from batch
