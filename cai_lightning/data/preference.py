"""Preference pairs for DPO: (prompt, chosen, rejected), tokenized as SFT examples are, and cached.

    pairs ─► validated ─► prompt and each response tokenized ─► train / val ─► batches
    (the stage's        (no empty     separately, concatenated,  (a stable      (chosen rows, then rejected rows,
     preference split,   side, chosen  the prompt kept whole and   hash of the   each pair's id: the model looks
     a file, or a Hub    != rejected)  the responses cut; a pair   prompt)       its reference log-probs up by it)
     dataset)                          that cannot fit is dropped
                                       and counted)

The SFT splits of :class:`CodeInstructionDataModule` stay: ``test`` and ``predict`` (and the sample callback)
use the held-out tasks as in SFT. The cache key holds everything the cached arrays depend on: the pairs'
content, the tokenizer, ``max_length`` and the validation share. The reference model's log-probs are the
model's business: :class:`~cai_lightning.dpo.PreferenceLM` computes them once when it is set up, and caches
them beside the pairs (:attr:`PreferenceDataModule.pair_cache_dir`) under the reference's identity, device type
and precision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.data.records import load_source
from cai_lightning.data.tokenization import build_example, tokenizer_fingerprint
from cai_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PAIRS_FORMAT = 2  # bump when what the pair cache holds changes (2: a pair id, no reference log-probs)
PAIR_FIELDS = ("prompt", "chosen", "rejected")
STAGE = "stage"  # data.pairs value: the constitution stage's preference split


class PreferenceDataModule(CodeInstructionDataModule):
    """Preference pairs (and the SFT splits, for ``test`` and samples) for :class:`~cai_lightning.dpo.PreferenceLM`.

    Args:
        pairs: ``stage``: the preference split the constitution stage wrote (chosen = the revision, rejected
            = the dataset's response; needs ``constitution``, and reuses the stage's cache when its settings
            match the SFT run's); or a local ``.json``/``.jsonl``/``.parquet`` file, or a Hub dataset id,
            with string columns ``prompt``, ``chosen``, ``rejected`` (the prompt exactly as the model
            should see it, template included).
        pairs_split: Split of a Hub dataset of pairs.
        pairs_val_fraction: Share of pairs held out for validation, by a stable hash of the prompt.
        reference_batch_size: Pairs per forward pass when the model computes the reference log-probs.
        **kwargs: Everything :class:`CodeInstructionDataModule` takes (source, constitution, revise,
            max_length, batch_size, ...): the SFT data the pairs come with.

    The reference model is the one ``model.pretrained`` names: :class:`~cai_lightning.dpo.PreferenceLM` computes
    its log-probs of :meth:`pair_examples` when it is set up, so the data module never needs the model.
    """

    def __init__(
        self,
        pairs: str = STAGE,
        pairs_split: str = "train",
        pairs_val_fraction: float = 0.1,
        reference_batch_size: int = 8,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= pairs_val_fraction < 1:
            raise ConfigError(f"data.pairs_val_fraction must be in [0, 1), got {pairs_val_fraction}")
        if pairs == STAGE and not self.hparams.constitution:
            raise ConfigError("data.pairs: stage needs data.constitution (the stage writes the pairs); or give a file")
        self.pair_splits: dict[str, object] = {}  # "train"/"val" → datasets.Dataset, set by setup()
        self.pair_manifest: dict = {}
        self._pair_path: Path | None = None

    @property
    def _only_split_read(self) -> str | None:
        """None with ``pairs: stage``: the pairs are built in ``prepare_data`` from the stage's preference
        split, whatever the command reads."""
        return None if self.hparams.pairs == STAGE else super()._only_split_read

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        super().prepare_data()
        if not (self._resolved[1] / "manifest.json").exists():
            return  # DDP: the ranks share the constitution stage out in setup(), which calls this again
        tokenizer = self._load_tokenizer()
        raw, origin, source_key = self._raw_pairs(tokenizer)
        hp = self.hparams
        key = hashlib.sha256(json.dumps({
            "format": PAIRS_FORMAT, "pairs": source_key, "tokenizer": tokenizer_fingerprint(tokenizer),
            "max_length": hp.max_length, "val_fraction": hp.pairs_val_fraction,
        }, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_root / "preference" / key
        self._pair_path = path
        if (path / "manifest.json").exists():
            print(f"Reusing cached preference pairs {path}")
            return
        staging = path.with_name(f".tmp-{key}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            manifest = self._build_pairs(raw, origin, tokenizer, staging)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, path)  # atomic: complete or absent
        except OSError:
            if not (path / "manifest.json").exists():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"Built preference pairs {path}")
        print(format_pair_summary(json.loads((path / "manifest.json").read_text())))

    def setup(self, stage: str | None = None) -> None:
        import datasets

        super().setup(stage)
        if self.pair_splits:
            return
        if self._pair_path is None:  # other ranks: prepare_data ran in another process
            self.prepare_data()
        self.pair_manifest = json.loads((self._pair_path / "manifest.json").read_text())
        loaded = datasets.load_from_disk(str(self._pair_path / "dataset"))
        self.pair_splits = {name: loaded[name] if name in loaded else loaded["train"].select([]) for name in ("train", "val")}

    # ---------------------------------------------------------------- building
    def _load_tokenizer(self):
        from transformers import AutoTokenizer

        _, path = self._resolved
        return AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=False)

    def _raw_pairs(self, tokenizer) -> tuple[list[dict], str, str]:
        """The pairs as read (conversations rendered with ``tokenizer``'s chat template) and checked, where
        they came from, and a key of their content."""
        import datasets

        hp = self.hparams
        if hp.pairs == STAGE:
            key, path = self._resolved
            split = datasets.load_from_disk(str(path / "dataset"))["preference"]
            rows = [{f: row[f] for f in PAIR_FIELDS} for row in split]
            kinds = split["kind"] if len(split) else []
            origin = (
                f"the constitution stage's preference split ({path}: {kinds.count('revision')} revision, "
                f"{kinds.count('verified')} execution-verified)"
            )
            return check_pairs(rows, origin), origin, f"stage:{key}"
        loaded = load_source(hp.pairs, split=hp.pairs_split, on_bad_rows="error", flag="data.pairs")
        columns = loaded.rows.column_names
        # a conversational dataset may leave the prompt inside chosen and rejected (ultrafeedback_binarized)
        needed = PAIR_FIELDS[1:] if "chosen" in columns and is_conversation(loaded.rows[0]["chosen"]) else PAIR_FIELDS
        missing = [f for f in needed if f not in columns]
        if missing:
            raise DataError(
                f"{loaded.origin}: no column {missing[0]!r} (a preference file needs prompt, chosen and rejected; "
                f"columns found: {', '.join(columns) or 'none'})"
            )
        rows = [{f: row.get(f) for f in PAIR_FIELDS} for row in loaded.rows]
        rows = conversations_as_text(rows, tokenizer, loaded.origin, loaded.lines)
        return check_pairs(rows, loaded.origin, loaded.lines), loaded.origin, loaded.fingerprint

    def _build_pairs(self, raw: list[dict], origin: str, tokenizer, out: Path) -> dict:
        import datasets

        hp = self.hparams
        examples, dropped, truncated = tokenize_pairs(raw, tokenizer, hp.max_length)
        if dropped:
            log.warning("%s: dropped %d pair(s) whose prompt alone fills data.max_length=%d", origin, dropped, hp.max_length)
        if not examples:
            raise DataError(f"{origin}: no pair fits data.max_length={hp.max_length} ({len(raw)} pairs read)")
        for pair_id, example in enumerate(examples):
            example["pair_id"] = pair_id  # what the model's reference log-probs are looked up by
        by_split = {"train": [], "val": []}
        for example in examples:
            by_split[pair_split(example["prompt"], hp.pairs_val_fraction, hp.split_seed)].append(example)
        if not by_split["train"]:
            raise DataError(f"{origin}: every pair fell into validation; lower data.pairs_val_fraction")
        # an empty split is not saved (datasets writes it as zero shards, which it cannot load back)
        splits = {name: datasets.Dataset.from_list(rows) for name, rows in by_split.items() if rows}
        datasets.DatasetDict(splits).save_to_disk(str(out / "dataset"))
        return {
            "origin": origin, "pairs_read": len(raw), "dropped_prompt_too_long": dropped,
            "truncated": truncated, "train": len(by_split["train"]), "val": len(by_split["val"]),
        }

    # ---------------------------------------------------------------- what the model reads
    @property
    def pair_cache_dir(self) -> Path:
        """The cache entry of the pairs ``prepare_data`` built: where the model keeps their reference log-probs."""
        if self._pair_path is None:
            raise RuntimeError("PreferenceDataModule.pair_cache_dir: prepare_data has not run")
        return self._pair_path

    def pair_examples(self) -> list[dict]:
        """Every tokenized pair of both splits (``pair_id``, ``chosen_*``, ``rejected_*``), by ``pair_id``."""
        rows = [row for split in self.pair_splits.values() for row in split]
        return sorted(rows, key=lambda row: row["pair_id"])

    # ---------------------------------------------------------------- loaders
    def _pair_loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        generator = torch.Generator().manual_seed(hp.shuffle_seed)
        return DataLoader(
            self.pair_splits[split], batch_size=hp.batch_size, shuffle=shuffle, generator=generator,
            collate_fn=PairCollator(self.tokenizer.pad_token_id, hp.pad_to_multiple_of), num_workers=hp.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._pair_loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._pair_loader("val", shuffle=False)


def check_pairs(rows: Sequence[dict], origin: str, lines: Sequence[int] | None = None) -> list[dict]:
    """The rows if each is a usable pair; else :class:`DataError` naming ``origin``, the row (its file line
    when ``lines`` gives them) and the field: each of prompt, chosen and rejected a non-empty string, and
    chosen different from rejected (a pair that prefers a response to itself teaches nothing)."""
    if not rows:
        raise DataError(f"{origin}: no preference pairs")
    for number, row in enumerate(rows, start=1):
        where = f"line {lines[number - 1]}" if lines is not None else f"row {number}"
        for field in PAIR_FIELDS:
            value = row.get(field)
            if not isinstance(value, str):
                raise DataError(f"{origin}: {where}: field {field!r} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise DataError(f"{origin}: {where}: field {field!r} is empty")
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{origin}: {where}: field 'chosen' is the same as 'rejected'")
    return list(rows)


def is_conversation(value) -> bool:
    """Whether a field holds chat messages (a list of ``{"role", "content"}``) rather than text."""
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def conversations_as_text(rows: Sequence[dict], tokenizer, origin: str, lines: Sequence[int] | None = None) -> list[dict]:
    """Pairs in the conversational format (as TRL and Hub preference datasets write them) as text pairs;
    text pairs are returned as they are.

    ``chosen`` and ``rejected`` are message lists; the prompt is ``prompt``'s messages when it is a list, else
    (a string, or no ``prompt`` column) the messages the two sides share at their start
    (``HuggingFaceH4/ultrafeedback_binarized`` repeats the user turn in each side), or, when they share none,
    ``prompt``'s text as one user turn. After the prompt each
    side must be exactly one assistant message, its ``content`` the response; the prompt is rendered with
    ``tokenizer``'s chat template up to where the answer starts, as ``data.prompt_style: chat`` renders SFT
    prompts. Raises :class:`DataError` naming ``origin``, the row and the field otherwise, or when the
    tokenizer has no chat template."""
    if not any(is_conversation(row["chosen"]) for row in rows):
        return list(rows)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{origin}: the pairs are chat messages, and rendering them needs a tokenizer with a chat template; "
            "start from an instruct model's SFT run (model.pretrained), or give text pairs"
        )
    out = []
    for number, row in enumerate(rows, start=1):
        where = f"line {lines[number - 1]}" if lines is not None else f"row {number}"
        for field in ("chosen", "rejected"):
            if not is_conversation(row[field]):
                raise DataError(f"{origin}: {where}: field {field!r} must be a list of {{role, content}} messages, like the other rows'")
        chosen, rejected = row["chosen"], row["rejected"]
        if is_conversation(row["prompt"]) and row["prompt"]:
            prompt = row["prompt"]
            sides = [side[len(prompt):] if side[: len(prompt)] == prompt else side for side in (chosen, rejected)]
        else:
            shared = 0
            while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, sides = chosen[:shared], [chosen[shared:], rejected[shared:]]
            if not prompt and isinstance(row["prompt"], str) and row["prompt"].strip():
                prompt = [{"role": "user", "content": row["prompt"]}]  # sides holding the answer alone
        if not prompt:
            raise DataError(f"{origin}: {where}: no prompt: give a 'prompt' column, or start both sides with the same user turn")
        for field, side in zip(("chosen", "rejected"), sides):
            if len(side) != 1 or side[0]["role"] != "assistant":
                raise DataError(
                    f"{origin}: {where}: field {field!r} must continue the prompt with one assistant message, got "
                    f"{[m['role'] for m in side]}"
                )
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        out.append({"prompt": text, "chosen": sides[0][0]["content"], "rejected": sides[1][0]["content"]})
    return out


def tokenize_pairs(rows: Sequence[dict], tokenizer, max_length: int) -> tuple[list[dict], int, int]:
    """Each pair as two prompt-masked examples (``build_example``: prompt and response tokenized apart and
    concatenated, EOS a label, the response cut to fit), plus counts of pairs dropped (the prompt alone
    fills ``max_length``) and of pairs with a side cut. Returns ``(examples, dropped, truncated)``."""
    prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    chosen = tokenizer([r["chosen"] for r in rows], add_special_tokens=False)["input_ids"]
    rejected = tokenizer([r["rejected"] for r in rows], add_special_tokens=False)["input_ids"]
    examples, dropped, truncated = [], 0, 0
    for row, prompt_ids, chosen_ids, rejected_ids in zip(rows, prompts, chosen, rejected):
        sides = [build_example(prompt_ids, ids, tokenizer.eos_token_id, max_length) for ids in (chosen_ids, rejected_ids)]
        if None in sides:
            dropped += 1
            continue
        full = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) + 1
        truncated += full > max_length
        examples.append({
            "prompt": row["prompt"],
            "chosen_input_ids": sides[0]["input_ids"], "chosen_labels": sides[0]["labels"],
            "rejected_input_ids": sides[1]["input_ids"], "rejected_labels": sides[1]["labels"],
        })
    return examples, dropped, truncated


def pair_split(prompt: str, val_fraction: float, seed: int) -> str:
    """``"train"`` or ``"val"`` from a stable hash of the prompt: a prompt's pairs stay together."""
    digest = hashlib.sha256(f"{seed}:pair:{prompt}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


@dataclass(frozen=True)
class PairCollator:
    """A batch of ``B`` pairs as one ``(2B, T)`` batch: the chosen rows, then the rejected rows in the same
    order, right-padded as :class:`PadCollator` pads SFT examples; ``pair_ids`` ``(B,)`` when the pairs carry
    ids, ``reference_logps`` ``(2B,)`` when they carry log-probs (benchmarks and tests give them)."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, pairs: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": p[f"{side}_input_ids"], "labels": p[f"{side}_labels"]}
                for side in ("chosen", "rejected") for p in pairs]
        batch = PadCollator(self.pad_id, self.pad_to_multiple_of)(rows)
        if "pair_id" in pairs[0]:
            batch["pair_ids"] = torch.tensor([p["pair_id"] for p in pairs], dtype=torch.long)
        if "reference_chosen" in pairs[0]:
            batch["reference_logps"] = torch.tensor(
                [p["reference_chosen"] for p in pairs] + [p["reference_rejected"] for p in pairs], dtype=torch.float32
            )
        return batch


def format_pair_summary(manifest: dict) -> str:
    return (
        f"  pairs: {manifest['pairs_read']} read from {manifest['origin']}: {manifest['train']} train, "
        f"{manifest['val']} val, {manifest['dropped_prompt_too_long']} dropped (prompt too long), "
        f"{manifest['truncated']} with a response cut"
    )
