"""Side effects at the edges: beam-search samples in TensorBoard, predictions as JSONL, and the fine-tuned
model exported in Hugging Face format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_only
from tqdm.auto import tqdm

from cai_lightning import evaluation, sandbox
from cai_lightning.constitution.prompts import extract_code
from cai_lightning.model import Generation


def _log_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.log_dir or trainer.default_root_dir)


class BeamSearchSamples(Callback):
    """At each validation epoch end, beam-search completions for a fixed set of prompts, logged to
    TensorBoard as text (tag ``samples``, one entry per global step) and briefly to the console.

    Uses the model's own ``generation`` settings, so samples look exactly like ``predict`` output.

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

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
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
            with trainer.precision_plugin.forward_context():
                completions = pl_module.complete(prompts)
        finally:
            pl_module.train(was_training)
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
    """Write ``predict`` output as JSONL, one ``{"prompt", "completions"}`` object per line.

    Args:
        output_path: File to write; ``null`` writes ``predictions.jsonl`` in the run's log folder.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_path = output_path

    def write_on_epoch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        path = Path(self.output_path) if self.output_path else _log_dir(trainer) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with path.open("w") as f:
            for batch in predictions:
                for item in batch:
                    f.write(json.dumps(item) + "\n")
                    n += 1
        print(f"Wrote {n} predictions to {path}")


class ExportHuggingFace(Callback):
    """At the end of ``fit``, save the model and tokenizer with ``save_pretrained`` into ``hf_model/``
    beside the run's ``checkpoints/``, so ``transformers.pipeline("text-generation", model=<dir>)`` loads it.

    The exported weights are the final ones; the best checkpoint by ``val/loss`` stays in ``checkpoints/``.
    """

    @rank_zero_only
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = _log_dir(trainer) / "hf_model"
        pl_module.model.save_pretrained(path)
        pl_module.tokenizer.save_pretrained(path)
        print(f"Exported the fine-tuned model and tokenizer to {path}")


class ExecutionEval(Callback):
    """At the end of ``test``: generate code for the held-out tasks, run it against their tests in the
    sandbox, and report pass@k, the syntax-valid rate and error counts.

    Metrics are logged as ``test/pass@k`` (``test/humaneval/pass@k`` for HumanEval) and printed as a
    table; every sample's completion and result goes to ``execution_<suite>.jsonl`` in the run's folder.
    Only tasks that carry ``tests`` are evaluated (the shipped task set does; the Hub dataset does not).

    Args:
        generation: How samples are drawn; ``num_return_sequences`` is ``n``, the samples per task.
            Sampling (``do_sample``) for pass@k with k > 1; ``num_beams: 1`` without sampling is greedy.
        ks: The k of pass@k to report; those above ``n`` are left out.
        humaneval: Also evaluate on HumanEval's 164 problems (needs ``pip install -e '.[humaneval]'``).
        limit: At most this many tasks per suite (``null``: all).
        humaneval_limit: At most this many HumanEval problems, the first ones (``null``: ``limit``).
        batch_size: Prompts generated at once.
        timeout_s: Wall-clock limit per program in the sandbox.
        memory_mb: Memory limit per program in the sandbox.
        workers: Programs run at once (``null``: one per CPU core).
        seed: Seed for sampling, so a re-run draws the same samples.
        extract_code: Score the code of each completion (its first fenced block, else the text before any
            ``### `` header), not the raw text: for models that answer in markdown, such as an instruct
            model before fine-tuning. Off, a fenced answer does not compile and fails.
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
        batch_size: int = 8,
        timeout_s: float = 10.0,
        memory_mb: int = 512,
        workers: int | None = None,
        seed: int = 1234,
        extract_code: bool = False,
    ) -> None:
        self.generation = generation
        self.ks = ks
        self.humaneval = humaneval
        self.limit = limit
        self.humaneval_limit = humaneval_limit
        self.batch_size = batch_size
        self.limits = sandbox.Limits(timeout_s=timeout_s, memory_mb=memory_mb)
        self.workers = workers
        self.seed = seed
        self.extract_code = extract_code
        self.reports: dict[str, evaluation.Report] = {}  # suite → last report, for callers and tests

    def _suites(self, trainer: pl.Trainer) -> dict[str, list[evaluation.Problem]]:
        rows = [r for r in trainer.datamodule.splits["test"] if r.get("tests")]
        suites = {"tasks": evaluation.problems_from_rows(rows)}
        limits = {"tasks": self.limit, "humaneval": self.humaneval_limit or self.limit}
        if self.humaneval:
            suites["humaneval"] = evaluation.humaneval_problems(trainer.datamodule.prompt)
        return {name: problems[: limits[name]] for name, problems in suites.items() if problems}

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for suite, problems in self._suites(trainer).items():
            completions = self._generate(trainer, pl_module, [p.prompt for p in problems], suite)
            if self.extract_code:
                completions = [[extract_code(c) for c in outs] for outs in completions]
            report = evaluation.evaluate(problems, completions, self.ks, self.limits, self.workers)
            self.reports[suite] = report
            prefix = "test/" if suite == "tasks" else f"test/{suite}/"
            for name, value in report.metrics.items():
                pl_module.log(prefix + name, float(value), rank_zero_only=True)
            path = _log_dir(trainer) / f"execution_{suite}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            report.write_jsonl(path)
            print(f"\nExecution-based evaluation on {suite} ({len(problems)} tasks):\n{report.table()}\nSamples: {path}")

    def _generate(self, trainer: pl.Trainer, pl_module, prompts: list[str], suite: str) -> list[list[str]]:
        torch.manual_seed(self.seed)
        out: list[list[str]] = []
        batches = range(0, len(prompts), self.batch_size)
        with trainer.precision_plugin.forward_context():
            for start in tqdm(batches, desc=f"generating for {suite}", unit="batch"):
                out.extend(pl_module.complete(prompts[start : start + self.batch_size], self.generation))
        return out
