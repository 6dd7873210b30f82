"""The LightningDataModule: everything left of the model.

    source ─► validated records ─► train/val/test ─► constitution stage ─► tokenizer ─► prompt-masked tokens
               (records.py)        (split_of, a       (constitution/       (tokenization.py)  (build_example)
                                    stable hash)       stage.py; optional)
    test_source ─► its tasks ──────► test (all of it; source then splits into train/val only)

``prepare_data`` does the expensive part once and caches it on disk under a fingerprint of everything it
depends on (the source's content, split settings, the test source's tasks, the constitution stage's
fingerprint, tokenizer, template, ``max_length``, masking, bad-row policy, this module's format version):
a second run with the same inputs reuses the cache and says so; any change builds a new entry. Entries are
written to a temporary folder and renamed into place, so a killed run never leaves a half-written cache. The
constitution stage keeps its own cache (one folder per fingerprint under ``<cache_dir>/constitution/``, chunk
by chunk), so it resumes after a kill and is not redone when only tokenization settings change. ``setup``
only loads.

Why one long module: ``prepare_data``'s cache protocol (fingerprint, staging, atomic rename, ranks) and
``setup``'s reading back are one contract; sources, tokenization, collation and the constitution stage are
modules of their own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, DistributedSampler

from cai_lightning.cache import cache_root
from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.critic import Critic, critic_identity
from cai_lightning.constitution.report import failing_must_pass, format_summary, pair_skip, verified_pairs
from cai_lightning.constitution.stage import ConstitutionStage, stage_fingerprint
from cai_lightning.data.collate import LengthGroupedSampler, PadCollator
from cai_lightning.data.records import OnBadRows, load_source, load_test_source, split_of, validate
from cai_lightning.data.tokenization import (
    build_example,
    load_pretrained_tokenizer,
    save_and_reload,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)
from cai_lightning.devices import inference_dtype, resolve_device, weights_sharded
from cai_lightning.errors import ConfigError, DataError
from cai_lightning.prompts import TEMPLATE_VERSION, PromptStyle, check_prompt_style, format_prompt, styled_prompt
from cai_lightning.settings import RANDOM_CRITIC_NAME, Revise

log = logging.getLogger(__name__)

CACHE_FORMAT = 4  # bump when what prepare_data writes changes shape (4: the preference split says each pair's kind)
SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test"]


class CodeInstructionDataModule(pl.LightningDataModule):
    """Instruction → Python code examples, prompt-masked and cached.

    Args:
        source: ``builtin`` (the task set shipped in the package), a local ``.json``/``.jsonl``/``.csv``/
            ``.parquet`` file, or a Hugging Face Hub dataset id such as
            ``iamtarun/python_code_instructions_18k_alpaca``. Rows need ``instruction`` and ``output``;
            ``input`` is optional.
        hub_split: Split of a Hub dataset to read (all of it is then re-split by ``val_fraction`` /
            ``test_fraction``).
        revision: Hub dataset revision (branch, tag or commit) to pin; ``null`` for the default branch.
        on_bad_rows: ``error`` stops at the first bad row, naming file, row and field; ``skip`` skips
            and counts such rows.
        val_fraction: Share of tasks held out for validation (by a stable hash of the task, see
            ``records.split_of``).
        test_fraction: Share of tasks held out for ``test``.
        split_seed: Seed of the split hash; change it for a different split.
        test_source: A task file to score as the test split, every task in it: a local ``.jsonl``/``.json``
            file in this project's format (``instruction``, ``output``, ``tests``, ``entry_point``, ...),
            HumanEval's (``task_id``, ``prompt``, ``entry_point``, ``test``; ``canonical_solution``
            optional) or MBPP's (``text``, ``code``, ``test_list``; ``test_setup_code`` optional), told
            apart by its columns; or ``humaneval`` (the 164 problems ``ExecutionEval(humaneval: true)``
            scores) or ``tasks`` (the shipped task set). ``source`` is then split into train and val only,
            by ``val_fraction``; ``test_fraction`` is not used. A task also found in ``source`` (same
            instruction and input) is counted in the summary, not removed. ``null``: the test split is
            ``test_fraction`` of ``source``.
        tokenizer: Name or folder for ``AutoTokenizer.from_pretrained`` (a ``[PAD]`` token is added);
            ``null`` trains a byte-level BPE on the training texts at prepare time (the offline default).
            In the CLI this is linked to ``model.pretrained``.
        vocab_size: Size of the trained BPE vocabulary (only when ``tokenizer`` is null).
        max_length: Longest sequence in tokens, prompt + target + EOS. Targets that overflow are cut;
            examples whose prompt alone fills it are dropped and counted.
        mask_prompt: Labels are -100 on prompt tokens, so the loss is on the code only.
        prompt_style: ``alpaca``: the dataset's own template (``prompts.py``); ``chat``: that text as the
            user turn of the pretrained tokenizer's chat template, the code as the assistant's answer
            (for instruct models such as SmolLM2-135M-Instruct).
        batch_size: Examples per batch (per device; see ``trainer.accumulate_grad_batches``).
        pad_to_multiple_of: Round each batch's padded length up to a multiple of this (8 suits GPU
            tensor cores); ``null`` pads to the longest example only.
        group_by_length: Batch examples of similar length together (less padding, faster).
        length_group_size: With ``group_by_length``, examples shuffled together and sorted by length into
            batches (rounded up to whole batches). Larger groups pad less but vary the batches less from
            epoch to epoch; a group covering the whole set makes the same batches every epoch. See
            ``LengthGroupedSampler``.
        num_workers: DataLoader worker processes.
        shuffle_seed: Seed for the training order.
        cache_dir: Where tokenized datasets (and trained tokenizers), the constitution stage's chunks and
            reference log-probs are cached, one folder per fingerprint; ``null``: the project's cache root
            (``$CAI_LIGHTNING_CACHE``, else ``~/.cache/cai_lightning``; :mod:`cai_lightning.cache`).
        predict_split: Which split's prompts ``predict`` completes.
        predict_limit: At most this many prompts in ``predict`` (``null``: all of the split).
        constitution: ``default`` (the constitution shipped in the package), the path of your own
            constitution YAML, or ``null`` to train on the raw data. When set, ``prepare_data`` critiques
            and revises the responses of ``revise.splits`` before tokenizing (see ``revise``).
        revise: Settings of the constitution stage (critic, rounds, candidates, fixers, batch size,
            generation lengths, seed); see ``Revise``.
    """

    def __init__(
        self,
        source: str = "builtin",
        hub_split: str = "train",
        revision: str | None = None,
        on_bad_rows: OnBadRows = "error",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        test_source: str | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 4096,
        max_length: int = 512,
        mask_prompt: bool = True,
        prompt_style: PromptStyle = "alpaca",
        batch_size: int = 8,
        pad_to_multiple_of: int | None = None,
        group_by_length: bool = True,
        length_group_size: int = 128,
        num_workers: int = 0,
        shuffle_seed: int = 0,
        cache_dir: str | None = None,
        predict_split: Split = "test",
        predict_limit: int | None = None,
        constitution: str | None = None,
        revise: Revise = Revise(),  # frozen, so one shared default instance is safe (and keeps errors clean:
        # with `Revise | None` jsonargparse wraps a bad value's ConfigError in a union-type traceback)
    ) -> None:
        super().__init__()
        held_out = 0.0 if test_source else test_fraction  # the share of source the test split takes
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + held_out < 1):
            raise ConfigError(
                f"data.val_fraction ({val_fraction}) and data.test_fraction ({test_fraction}) must be in [0, 1) "
                "and leave a share for training"
            )
        if max_length < 2:
            raise ConfigError(f"data.max_length must be at least 2, got {max_length}")
        if length_group_size < 1:
            raise ConfigError(f"data.length_group_size must be at least 1 (examples), got {length_group_size}")
        if prompt_style == "chat" and tokenizer is None:
            check_prompt_style(prompt_style, None)  # fails now, not after the data is read
        self.save_hyperparameters()
        self.revise = revise
        self.cache_root = cache_root(cache_dir)
        self.tokenizer = None  # set by setup()
        self.splits: dict[str, object] = {}  # split name → datasets.Dataset, set by setup()
        self.preferences = None  # datasets.Dataset of (prompt, chosen, rejected), set by setup() when revised
        self.manifest: dict = {}
        self._resolved: tuple[str, Path] | None = None
        self._stage_shared = False  # set once every rank has revised its share (DDP: _share_stage)

    # ---------------------------------------------------------------- cache key
    def _load_records(self) -> tuple[list[dict], dict]:
        hp = self.hparams
        loaded = load_source(hp.source, split=hp.hub_split, revision=hp.revision, on_bad_rows=hp.on_bad_rows)
        records, skipped = validate(
            loaded.rows, loaded.origin, loaded.rows.column_names, hp.on_bad_rows, lines=loaded.lines, skipped=loaded.skipped
        )
        rows_read = len(loaded.rows) + loaded.skipped  # a .jsonl's lines skipped while reading were read too
        return records, {"origin": loaded.origin, "fingerprint": loaded.fingerprint, "rows_read": rows_read, "rows_skipped": skipped}

    @property
    def _test_fraction(self) -> float:
        """The share of ``source`` split off as the test split: none when ``test_source`` is the test split."""
        return 0.0 if self.hparams.test_source else self.hparams.test_fraction

    def fingerprint(
        self, source_fingerprint: str, pretrained=None, stage_key: str | None = None, test_key: str | None = None
    ) -> str:
        """Key of the cache entry: a hash of every input of ``prepare_data``'s output. ``pretrained`` is the
        loaded ``data.tokenizer`` (None when a BPE is trained); ``stage_key`` the constitution stage's
        fingerprint (None without a constitution); ``test_key`` the fingerprint of ``test_source``'s tasks
        (None without one: then it is left out of the hash, and a key without a test source does not change)."""
        hp = self.hparams
        if pretrained is None:
            tokenizer_key = f"bpe:{hp.vocab_size}"
        else:
            tokenizer_key = f"pretrained:{tokenizer_fingerprint(pretrained)}"
        inputs = {
            "format": CACHE_FORMAT,
            "source": source_fingerprint,
            "on_bad_rows": hp.on_bad_rows,
            "split": [hp.val_fraction, self._test_fraction, hp.split_seed],
            "template": TEMPLATE_VERSION,
            "tokenizer": tokenizer_key,
            "max_length": hp.max_length,
            "mask_prompt": hp.mask_prompt,
            "prompt_style": hp.prompt_style,
            "chat_template": getattr(pretrained, "chat_template", None) if hp.prompt_style == "chat" else None,
            "constitution": stage_key and [stage_key, sorted(self.revise.splits), self.revise.verified_pairs],
        }
        if test_key is not None:
            inputs["test_source"] = test_key
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]

    def _resolve(self) -> tuple[str, Path, list[dict], dict, object, ConstitutionStage | None]:
        """Records (with their split), source facts, the pretrained tokenizer (loaded once, or None), the
        constitution stage (or None) and the cache key/path. With ``test_source``, its tasks are the test
        records, and the source facts hold its own under ``test_source``."""
        hp = self.hparams
        records, source = self._load_records()
        for record in records:
            record["split"] = split_of(record, hp.val_fraction, self._test_fraction, hp.split_seed)
        if hp.test_source:
            tests, source["test_source"] = load_test_source(hp.test_source, hp.on_bad_rows)
            source["test_source"]["in_source"] = _tasks_in(tests, records)
            records += [{**record, "split": "test"} for record in tests]
        pretrained = load_pretrained_tokenizer(hp.tokenizer) if hp.tokenizer else None
        check_prompt_style(hp.prompt_style, pretrained)
        stage = self._stage(records) if hp.constitution else None
        test_key = source["test_source"]["fingerprint"] if hp.test_source else None
        key = self.fingerprint(source["fingerprint"], pretrained, stage and stage.folder.name, test_key)
        read = self._only_split_read
        if (stage is not None and pretrained is not None and read not in (None, *self.revise.splits)
                and not (self.cache_root / key / "manifest.json").exists()):
            # the stage's critic can take hours, and the split this command reads is the same without it; not
            # so with a trained BPE, which learns from the revised training texts (a checkpoint's vocabulary)
            print(f"{self.trainer.state.fn.value} reads the {read} split only, which the constitution stage does not revise, "
                  "and no dataset it revised is cached: building the splits without the stage")
            stage = None
            key = self.fingerprint(source["fingerprint"], pretrained, None, test_key)
        return key, self.cache_root / key, records, source, pretrained, stage

    @property
    def _only_split_read(self) -> str | None:
        """The one split the trainer's command reads: the test split for ``test``, ``predict_split`` for
        ``predict``; None (every split) for ``fit``, for ``validate`` (which also builds the dataset a later
        ``fit`` reuses) and without a trainer. With a pretrained tokenizer, ``test`` and ``predict`` of a split
        the stage does not revise build the dataset without the stage when none built with it is cached."""
        fn = self.trainer.state.fn if isinstance(self.trainer, pl.Trainer) else None
        return {TrainerFn.TESTING: "test", TrainerFn.PREDICTING: self.hparams.predict_split}.get(fn)

    def _stage(self, records: list[dict]) -> ConstitutionStage:
        """The constitution stage for these records, keyed on everything its output depends on. Its critic
        is loaded only if a chunk is left to do."""
        hp, settings = self.hparams, self.revise
        constitution = Constitution.load(DEFAULT_PATH if hp.constitution == "default" else Path(hp.constitution).expanduser())
        # by default, the pretrained model being fine-tuned; `random`: the random GPT-2 whatever the model is
        critic_name = None if settings.critic == RANDOM_CRITIC_NAME else (settings.critic or hp.tokenizer)
        identity = critic_identity(critic_name, settings.seed, hp.vocab_size) if settings.uses_critic else None
        device = None  # the device type and the critic's dtype: CPU and GPU, bf16 and fp32 sample differently
        if settings.uses_critic:
            resolved = resolve_device(settings.device)
            dtype = inference_dtype(resolved) if critic_name else torch.float32  # Critic.random builds it in fp32
            device = f"{resolved.type}:{dtype}"
        rows = [r for r in records if r["split"] in settings.splits]
        key = stage_fingerprint(rows, constitution, identity, settings, device)

        def load_critic() -> Critic:
            if critic_name:
                return Critic.load(critic_name, settings.device)
            # the offline default: a random GPT-2 speaking a BPE trained on the same texts the model's is
            texts = (format_prompt(r["instruction"], r["input"]) + r["output"] for r in records if r["split"] == "train")
            return Critic.random(train_bpe_tokenizer(texts, hp.vocab_size), settings.seed, settings.device)

        return ConstitutionStage(constitution, settings, self.cache_root / "constitution" / key, load_critic)

    # ---------------------------------------------------------------- Lightning hooks
    def prepare_data(self) -> None:
        """Build (or reuse) the cached, tokenized splits. Raises :class:`DataError` on bad data."""
        key, path, records, source, pretrained, stage = self._resolve()
        self._resolved = (key, path)
        if (path / "manifest.json").exists():
            log.info("Reusing cached tokenized dataset %s (fingerprint %s)", path, key)
            print(f"Reusing cached tokenized dataset {path}")
            return
        if stage is not None and self._world_size > 1 and not self._stage_shared:
            return  # every rank revises its share of the stage in setup(), then this runs again (_share_stage)
        self.cache_root.mkdir(parents=True, exist_ok=True)
        for stale in self.cache_root.glob(f".tmp-{key}-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        staging = self.cache_root / f".tmp-{key}-{os.getpid()}"
        try:
            manifest = self._build(records, source, pretrained, stage, staging)
            manifest["fingerprint"] = key
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
            os.replace(staging, path)  # atomic: the entry is complete or absent
        except OSError:
            if not (path / "manifest.json").exists():
                raise
            log.info("another process built %s first", path)  # concurrent builds of the same key
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"Built tokenized dataset {path}")
        _print_summary(json.loads((path / "manifest.json").read_text()))

    def _build(self, records: list[dict], source: dict, pretrained, stage: ConstitutionStage | None, out: Path) -> dict:
        import datasets

        hp = self.hparams
        for record in records:
            record["prompt"] = styled_prompt(hp.prompt_style, pretrained, record["instruction"], record["input"])
            record["original_output"] = record["output"]
            record["provenance"] = ""  # JSON of the stage's record for revised rows
        by_split = {s: [r for r in records if r["split"] == s] for s in SPLITS}
        for name, fraction in (("train", 1.0), ("val", hp.val_fraction), ("test", self._test_fraction)):
            if fraction > 0 and not by_split[name]:
                raise DataError(
                    f"{source['origin']}: the {name} split is empty ({len(records)} rows in all); "
                    f"add rows or raise data.{name}_fraction"
                )

        manifest = {"source": source, "splits": {}}
        shared = sum(source.get("test_source", {}).get("in_source", {}).values())
        if shared:
            log.warning(
                "data.test_source: %d of its tasks are in data.source too (%s): their scores are not held out",
                shared, ", ".join(f"{n} in {split}" for split, n in source["test_source"]["in_source"].items() if n),
            )
        preferences = []
        if stage is not None:
            manifest["constitution"], preferences, records = self._revise(stage, records, source["origin"])
            by_split = {s: [r for r in records if r["split"] == s] for s in SPLITS}  # less the rows dropped

        if pretrained is None:
            texts = (r["prompt"] + r["output"] for r in by_split["train"])
            tokenizer = train_bpe_tokenizer(texts, hp.vocab_size)
        else:
            tokenizer = pretrained
        tokenizer = save_and_reload(tokenizer, out / "tokenizer")

        splits = {}
        for name in SPLITS:
            rows = by_split[name]
            prompts = tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
            targets = tokenizer([r["output"] for r in rows], add_special_tokens=False)["input_ids"]
            kept, dropped, truncated = [], 0, 0
            for row, prompt_ids, target_ids in zip(rows, prompts, targets):
                example = build_example(prompt_ids, target_ids, tokenizer.eos_token_id, hp.max_length, hp.mask_prompt)
                if example is None:
                    dropped += 1
                    continue
                truncated += len(example["input_ids"]) < len(prompt_ids) + len(target_ids) + 1
                kept.append({**row, **example, "prompt_length": len(prompt_ids)})
            if dropped:
                log.warning(
                    "%s split: dropped %d example(s) whose prompt alone fills data.max_length=%d",
                    name, dropped, hp.max_length,
                )
            if truncated:
                log.warning("%s split: cut the target of %d example(s) at data.max_length=%d", name, truncated, hp.max_length)
            if not kept and rows:
                origin = source["test_source"]["origin"] if name == "test" and "test_source" in source else source["origin"]
                raise DataError(
                    f"{origin}: every {name} example's prompt is longer than data.max_length={hp.max_length}; "
                    "raise data.max_length"
                )
            splits[name] = datasets.Dataset.from_list(kept) if kept else datasets.Dataset.from_dict({})
            manifest["splits"][name] = {
                "examples": len(kept),
                "dropped_prompt_too_long": dropped,
                "truncated_target": truncated,
                "target_tokens": sum(sum(t != -100 for t in e["labels"]) for e in kept),
            }
        if stage is not None:
            splits["preference"] = datasets.Dataset.from_list(preferences) if preferences else datasets.Dataset.from_dict(
                {k: [] for k in ("task_id", "split", "prompt", "chosen", "rejected", "kind")}
            )
        datasets.DatasetDict(splits).save_to_disk(str(out / "dataset"))
        return manifest

    def _revise(self, stage: ConstitutionStage, records: list[dict], origin: str) -> tuple[dict, list[dict], list[dict]]:
        """Run the constitution stage on the records of ``revise.splits`` (in place: ``output`` becomes the
        chosen response, ``original_output`` keeps the dataset's, ``provenance`` the stage's record), and
        the checks alone on the other splits' records.

        Returns the manifest's ``constitution`` entry (:func:`summarize`'s counts, plus ``on_failure``,
        ``failing_rows``: the task ids, or ``row N`` (1-based among the valid rows) without one, of the
        revised rows still failing a ``must_pass`` check, ``dropped``: how many of them were left out, and
        ``checked_splits``: per split not revised, its rows, rows violating each checked principle, and
        rows failing a ``must_pass`` check), the preference pairs (:func:`pair_skip` says which rows give
        one), and the records to train on: all of them with ``on_failure: keep``, else those not failing.
        Raises :class:`DataError` when dropping would empty a split that had rows.
        """
        settings = self.revise
        rows = [r for r in records if r["split"] in settings.splits]
        print(f"Constitution stage: {len(rows)} rows of {', '.join(settings.splits)} ({stage.folder})")
        provenance = stage.run(rows)
        number = {id(r): n for n, r in enumerate(records, start=1)}
        preferences, failing = [], []
        for row, record in zip(rows, provenance):
            row["output"] = record["final"]
            row["provenance"] = json.dumps(record)
            if failing_must_pass(record["findings_after"], stage.must_pass):
                failing.append(row)
            pair = {"task_id": row["task_id"], "split": row["split"], "prompt": row["prompt"]}
            if pair_skip(record, stage.must_pass) is None:
                preferences.append({**pair, "chosen": record["final"], "rejected": record["original"], "kind": "revision"})
            if settings.verified_pairs:
                preferences += [
                    {**pair, "chosen": chosen, "rejected": rejected, "kind": "verified"}
                    for chosen, rejected in verified_pairs(record, stage.must_pass)
                ]
        kept = records
        if settings.on_failure == "drop" and failing:
            dropped = {id(r) for r in failing}
            kept = [r for r in records if id(r) not in dropped]
            for name in settings.splits:
                before = sum(r["split"] == name for r in rows)
                if before and not any(r["split"] == name for r in kept):
                    raise DataError(
                        f"{origin}: all {before} {name} rows still fail a must-pass check "
                        f"({', '.join(stage.must_pass)}) after revision, and data.revise.on_failure: drop would "
                        f"leave the {name} split empty; fix the rows' code or tests, narrow data.revise.must_pass, "
                        "or set data.revise.on_failure: keep"
                    )
        summary = {
            "constitution": stage.constitution.source,
            "fingerprint": stage.folder.name,
            "splits": list(settings.splits),
            **stage.summarize(provenance),
            "verified_pairs_used": settings.verified_pairs,
            "on_failure": settings.on_failure,
            "failing_rows": [r["task_id"] or f"row {number[id(r)]}" for r in failing],
            "dropped": len(failing) if settings.on_failure == "drop" else 0,
            "checked_splits": self._check_splits(stage, [r for r in records if r["split"] not in settings.splits]),
        }
        return summary, preferences, kept

    @staticmethod
    def _check_splits(stage: ConstitutionStage, rows: list[dict]) -> dict:
        """The checks alone, all tests included, on the rows of the splits that are not revised (what
        the model is scored on): per split, rows, rows violating each checked principle, rows failing a
        ``must_pass`` check. Cached by the stage."""
        if not rows:
            return {}
        names = sorted({r["split"] for r in rows}, key=SPLITS.index)
        print(f"Constitution checks: {len(rows)} rows of {', '.join(names)} (checked, not revised)")
        findings = stage.check_only(rows)
        checked = {}
        for name in names:
            found = [f for r, f in zip(rows, findings) if r["split"] == name]
            checked[name] = {
                "rows": len(found),
                "violations": {p.name: sum(bool(f[p.check]) for f in found) for p in stage.constitution.principles if p.check},
                "rows_failing_must_pass": sum(bool(failing_must_pass(f, stage.must_pass)) for f in found),
            }
        return checked

    def setup(self, stage: str | None = None) -> None:
        """Load the cached splits and tokenizer built by ``prepare_data``."""
        import datasets
        from transformers import AutoTokenizer

        if self.tokenizer is not None:
            return
        if self._resolved is None:  # other ranks: prepare_data ran in another process
            key, path, *_ = self._resolve()
            self._resolved = (key, path)
        key, path = self._resolved
        if not (path / "manifest.json").exists() and self._world_size > 1 and self.hparams.constitution:
            self._share_stage()
        if not (path / "manifest.json").exists():
            raise DataError(f"no cached dataset at {path}: prepare_data must run first")
        self.manifest = json.loads((path / "manifest.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", trust_remote_code=False)
        loaded = datasets.load_from_disk(str(path / "dataset"))
        self.splits = {name: loaded[name] for name in SPLITS}
        self.preferences = loaded["preference"] if "preference" in loaded else None

    @property
    def stage_summary(self) -> dict | None:
        """The constitution stage's summary of the dataset ``setup`` loaded (what :func:`format_summary` prints),
        or None without a constitution stage: :class:`~cai_lightning.callbacks.ConstitutionReport` logs it."""
        return self.manifest.get("constitution")

    @property
    def _world_size(self) -> int:
        return getattr(getattr(self, "trainer", None), "world_size", 1)

    def _share_stage(self) -> None:
        """The constitution stage on every rank, each revising the chunks no other rank holds (the stage's
        chunk locks share them out: about 1/N of the time on N ranks, the same result as one process), then
        ``prepare_data`` on each node's first rank, which reads the finished chunks and builds the dataset.
        The barriers have no timeout, as Lightning's own around ``prepare_data``: the stage can take hours."""
        from lightning.fabric.utilities.distributed import _InfiniteBarrier

        trainer = self.trainer
        _, _, records, _, _, stage = self._resolve()
        print(f"Constitution stage: rank {trainer.global_rank} of {trainer.world_size} revising its share ({stage.folder})")
        with _InfiniteBarrier():
            stage.run([r for r in records if r["split"] in self.revise.splits], progress=trainer.is_global_zero)
        print(f"Constitution stage: rank {trainer.global_rank} revised {len(stage.chunks_revised)} chunk(s)")
        self._stage_shared = True
        with _InfiniteBarrier():
            if trainer.local_rank == 0:
                self.prepare_data()

    # ---------------------------------------------------------------- loaders
    def _collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id, self.hparams.pad_to_multiple_of)

    def _labelled(self, split: str):
        return self.splits[split].select_columns(["input_ids", "labels"])

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        data = self._labelled("train")
        if hp.group_by_length:
            lengths = [len(ids) for ids in data["input_ids"]]
            sampler = LengthGroupedSampler(lengths, hp.batch_size, hp.length_group_size, seed=hp.shuffle_seed)
            return DataLoader(data, batch_size=hp.batch_size, sampler=sampler, collate_fn=self._collator(), num_workers=hp.num_workers)
        return DataLoader(data, batch_size=hp.batch_size, shuffle=True, collate_fn=self._collator(), num_workers=hp.num_workers)

    def _eval_loader(self, data, sampler=None) -> DataLoader:
        return DataLoader(
            data, batch_size=self.hparams.batch_size, sampler=sampler, collate_fn=self._collator(),
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._labelled("val"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._labelled("test"))

    def predict_dataloader(self) -> DataLoader:
        """Left-padded prompts (no targets) of ``predict_split``.

        Under FSDP on several processes every rank gets as many prompts: each forward pass there is a collective
        of all ranks, and Lightning's own predict sharding (no prompt repeated) can leave one rank a batch short,
        the others waiting for it forever. ``DistributedSampler`` evens the shares by repeating the first few
        prompts; ``JsonlPredictionWriter`` writes each prompt once.
        """
        data = self.prompt_examples(self.hparams.predict_split, self.hparams.predict_limit)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and weights_sharded(trainer):
            sampler = DistributedSampler(data, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False)
            return self._eval_loader(data, sampler)
        return self._eval_loader(data)

    def prompt(self, instruction: str, input: str = "") -> str:
        """A prompt in this data's ``prompt_style``, as the policy saw them in training (after ``setup``)."""
        return styled_prompt(self.hparams.prompt_style, self.tokenizer, instruction, input)

    def prompt_examples(self, split: Split, limit: int | None = None) -> list[dict]:
        """The first ``limit`` prompts of ``split`` as ``{"input_ids"}`` (the prompt tokens only)."""
        data = self.splits[split]
        head = data[: len(data) if limit is None else min(limit, len(data))]  # one read of both columns
        return [{"input_ids": ids[:k]} for ids, k in zip(head["input_ids"], head["prompt_length"])]


def _tasks_in(tests: list[dict], records: list[dict]) -> dict[str, int]:
    """How many of the records hold one of the ``tests`` tasks (the same instruction and input), per split."""
    tasks = {(r["instruction"], r["input"]) for r in tests}
    return {name: sum(r["split"] == name and (r["instruction"], r["input"]) in tasks for r in records) for name in ("train", "val")}


def _print_summary(manifest: dict) -> None:
    source = manifest["source"]
    print(f"  source: {source['origin']}: {source['rows_read']} rows read, {source['rows_skipped']} bad rows skipped")
    if "test_source" in source:
        test = source["test_source"]
        print(
            f"  test split: {test['origin']} ({test['format']} format): {test['rows_read']} rows read, "
            f"{test['rows_skipped']} bad rows skipped, {test['rows_without_tests']} without tests (not scored by "
            f"execution), {sum(test['in_source'].values())} also in the source; the source is split into train and "
            "val only (data.test_fraction is not used)"
        )
    if "constitution" in manifest:
        summary = manifest["constitution"]
        print(f"  constitution {summary['constitution']} on {', '.join(summary['splits'])}:")
        print(format_summary(summary))
    for name, stats in manifest["splits"].items():
        print(
            f"  {name:5s}: {stats['examples']:6d} examples, {stats['target_tokens']:8d} target tokens, "
            f"{stats['dropped_prompt_too_long']} dropped (prompt too long), {stats['truncated_target']} targets cut"
        )
