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

    Each epoch: shuffle all indices, cut them into groups of ``group_size`` (rounded up to whole batches),
    sort each group by length (longest first) and cut it into batches, then shuffle the order of all
    batches so the epoch does not run from long to short (a short last batch stays last, keeping our
    batches aligned with the DataLoader's), then swap the batch holding the longest example to the front,
    as Hugging Face's sampler does: a batch too large for memory fails at the first step, not hours in.
    Seeded per epoch (``set_epoch``), so runs are reproducible and resumable.

    ``group_size`` trades padding for randomness. One group holding the whole set pads least, but sorting
    it makes the same batches every epoch (only examples of equal length trade places), so the model
    sees one fixed set of batches in new orders. Groups of a few batches draw new batches every epoch
    from the shuffle, as Hugging Face's sampler of the same name does (its groups are ``min(50,
    len // (4 * batch_size))`` batches).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, group_size: int, seed: int = 0) -> None:
        if batch_size < 1 or group_size < 1:
            raise ValueError(f"batch_size ({batch_size}) and group_size ({group_size}) must be positive")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group_size = math.ceil(group_size / batch_size) * batch_size  # whole batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.group_size):
            group = sorted(order[start : start + self.group_size], key=lambda i: -self.lengths[i])
            batches.extend(group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size))
        # Only the very last batch can be short; keep it last so DataLoader batches stay aligned with ours.
        tail = [batches.pop()] if batches and len(batches[-1]) < self.batch_size else []
        batches = [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]
        # The longest example leads the epoch; each batch is sorted longest first.
        longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b][0]], default=None)
        if tail and (longest is None or self.lengths[tail[0][0]] > self.lengths[batches[longest][0]]):
            if batches:  # in the short last batch, which stays last: only that example moves to the front
                batches[0][0], tail[0][0] = tail[0][0], batches[0][0]
        elif longest is not None:
            batches[0], batches[longest] = batches[longest], batches[0]
        for batch in batches + tail:
            yield from batch


def padding_share(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """Share of the tokens of right-padded batches that is padding, the batches being ``order`` cut into
    ``batch_size`` examples (as a DataLoader with this sampler cuts them)."""
    padded = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        padded += len(batch) * max(batch)
        real += sum(batch)
    return 1 - real / padded if padded else 0.0
