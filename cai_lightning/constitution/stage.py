"""The constitution stage: each row's response is critiqued and revised under the constitution, and a
revision is kept only if the automatic checks score it strictly higher.

    response ─► checks ─► for each step: principle ─► critique ─► k revisions (+ fixer) ─► checks ─► gate
    (dataset's       (sandbox,     (sampled with     (critic;     (critic, batched;              strictly
     output, or       AST, ruff)    the seed, or      findings     ruff + docstrings              higher score
     the critic's)                  all in turn)      quoted)      for the fixer)                 replaces

Score of a response: the sum of the weights of the checks it passes (``weight`` in the constitution),
less 0.01 per finding (at most 99 counted), so fewer findings is progress but never outweighs a check
passed. A row that already passes every check is not sent to the critic: no candidate could score
strictly higher, so skipping it changes nothing but the time taken.

Rows are processed in chunks of ``batch_size`` rows of similar length. Each finished chunk is written atomically to the stage's
folder as ``chunk-NNNNNN.json`` (the provenance of its rows); a re-run after a kill — SIGKILL included —
reads the finished chunks and does only the rest. Every random draw is seeded from ``(seed, chunk, step)``
and never from the global RNG, so the resumed result is identical to an uninterrupted run's.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from cai_lightning.constitution.checks import Finding, check_many, fix_many, parse_code, summary_docstring
from cai_lightning.constitution.critic import Critic
from cai_lightning.constitution.principles import Constitution, Principle
from cai_lightning.constitution.prompts import critique_prompt, extract_code, revision_prompt
from cai_lightning.errors import ConfigError
from cai_lightning.prompts import format_prompt

log = logging.getLogger(__name__)

STAGE_FORMAT = 4  # bump when what a chunk file holds, or how it is computed, changes
MAX_COUNTED_FINDINGS = 99


@dataclass(frozen=True)
class Revise:
    """Settings of the constitution stage (``data.revise`` in the CLI).

    Args:
        critic: Hugging Face causal LM (name or folder) that writes critiques and revisions; ``null``: the
            pretrained model being fine-tuned (``model.pretrained``), or — when that is null too, as in
            the offline default — a tiny randomly initialised GPT-2, which writes noise.
        response_source: ``dataset`` revises the dataset's ``output``; ``model`` first has the critic
            answer the prompt and revises its answer (the Constitutional-AI way).
        rounds: Critique → revision rounds per row.
        principles: ``sample`` draws one principle per round (seeded); ``all`` goes through every
            principle in turn in each round.
        candidates: Revisions the critic proposes per step (0: no critic at all, fixers only).
        fixers: Also propose the response as fixed automatically (ruff's safe fixes and formatter, and a
            docstring from the instruction for the entry point), behaviour unchanged.
        splits: Which splits are revised; the others keep the dataset's output.
        batch_size: Rows per batched generation call (and per chunk saved for resuming).
        critique_tokens: New tokens per critique.
        revision_tokens: New tokens per revision (and per response with ``response_source: model``).
        do_sample: Sample (``temperature``, ``top_k``, ``top_p``) instead of greedy decoding.
        temperature: Softmax temperature when sampling.
        top_k: Only the ``top_k`` most likely tokens can be drawn when sampling (0: any token).
        top_p: Nucleus sampling mass when sampling.
        seed: Seeds principle sampling and generation.
        workers: Sandbox processes running unit tests at once (``null``: one per CPU core). Does not
            change the result.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
    """

    critic: str | None = None
    response_source: Literal["dataset", "model"] = "dataset"
    rounds: int = 1
    principles: Literal["sample", "all"] = "sample"
    candidates: int = 2
    fixers: bool = True
    splits: tuple[str, ...] = ("train",)
    batch_size: int = 16
    critique_tokens: int = 64
    revision_tokens: int = 256
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0
    workers: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("rounds", "batch_size", "critique_tokens", "revision_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.revise.{name} must be at least 1, got {getattr(self, name)}")
        if self.top_k < 0:
            raise ConfigError(f"data.revise.top_k must be 0 (any token) or more, got {self.top_k}")
        if self.candidates < 0:
            raise ConfigError(f"data.revise.candidates must be 0 or more, got {self.candidates}")
        if self.candidates == 0 and not self.fixers:
            raise ConfigError("data.revise.candidates is 0 and data.revise.fixers is false: nothing would propose a revision")
        if self.candidates == 0 and self.response_source == "model":
            raise ConfigError("data.revise.response_source: model needs the critic, but data.revise.candidates is 0")
        if not self.do_sample and self.candidates > 1:
            raise ConfigError(
                f"data.revise.candidates is {self.candidates} but data.revise.do_sample is false: greedy decoding "
                "would propose the same revision each time; set do_sample: true or candidates: 1"
            )
        unknown = set(self.splits) - {"train", "val", "test"}
        if unknown:
            raise ConfigError(f"data.revise.splits: unknown split(s) {', '.join(sorted(unknown))}; use train, val, test")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"data.revise.workers must be at least 1, got {self.workers}")

    @property
    def uses_critic(self) -> bool:
        return self.candidates > 0 or self.response_source == "model"


def score(findings: dict[str, list], weights: dict[str, float]) -> float:
    """Sum of the weights of the checks without findings, less 0.01 per finding (at most 99 counted)."""
    passed = sum(weight for check, weight in weights.items() if not findings[check])
    count = min(sum(len(f) for f in findings.values()), MAX_COUNTED_FINDINGS)
    return round(passed - 0.01 * count, 4)


def stage_fingerprint(rows: list[dict], constitution: Constitution, critic: dict, settings: Revise, device: str) -> str:
    """Key of the stage's folder: the rows, the constitution, the critic's identity, every setting that
    changes the result, and the device type (CPU and GPU sample differently). ``workers`` is left out."""
    from importlib.metadata import version

    rows_digest = hashlib.sha256()
    for row in rows:
        rows_digest.update(json.dumps([row[k] for k in ("instruction", "input", "output", "tests", "entry_point")]).encode())
    inputs = {
        "format": STAGE_FORMAT,
        "rows": rows_digest.hexdigest(),
        "constitution": [asdict(p) for p in constitution.principles],
        "critic": critic,
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("workers", "device", "splits")},
        "device": device,
        "ruff": version("ruff"),  # its rules and fixes decide style findings and fixer output
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


class ConstitutionStage:
    """Critique → revision of a list of rows, chunked, resumable, with provenance per row.

    Args:
        constitution: The principles, their requests, checks and weights.
        settings: See :class:`Revise`.
        folder: Where finished chunks are kept (the stage's cache: one folder per fingerprint).
        critic: Loaded lazily by this callable the first time a chunk needs it, so a finished stage
            costs no model load; ``None`` when ``settings.candidates`` is 0 (fixers only).
    """

    def __init__(
        self, constitution: Constitution, settings: Revise, folder: Path, critic: Callable[[], Critic] | None = None
    ) -> None:
        self.constitution = constitution
        self.settings = settings
        self.folder = folder
        self._load_critic = critic
        self._critic: Critic | None = None
        self.weights = constitution.weights
        self.max_score = score({check: [] for check in self.weights}, self.weights)

    @property
    def critic(self) -> Critic:
        if self._critic is None:
            self._critic = self._load_critic()
        return self._critic

    # ---------------------------------------------------------------- driver
    def run(self, rows: list[dict], progress: bool = True) -> list[dict]:
        """Provenance for every row, in order (see :meth:`_revise_chunk` for its fields).

        Finished chunks are read from ``folder``; missing ones are computed and saved one by one."""
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        for torn in self.folder.glob(".chunk-*.tmp"):  # a killed run's unfinished write
            torn.unlink(missing_ok=True)
        size = self.settings.batch_size
        # chunks of rows of similar length: less left padding in every batch. The order is a pure
        # function of the rows, so a resumed run cuts the same chunks.
        order = sorted(range(len(rows)), key=lambda i: (_length(rows[i]), i))
        chunks = [[rows[i] for i in order[start : start + size]] for start in range(0, len(rows), size)]
        done = {index: self._read(index) for index in range(len(chunks))}
        done = {index: result for index, result in done.items() if result is not None and len(result) == len(chunks[index])}
        if len(done) < len(chunks) and self.settings.uses_critic:
            self.critic  # load it now: a critic that cannot be loaded fails before any work, not mid-way
        if len(done) == len(chunks):
            print(f"Constitution stage: reusing all {len(chunks)} chunks in {self.folder}")
        elif done:
            print(f"Constitution stage: resuming, {len(done)} of {len(chunks)} chunks already done in {self.folder}")
        bar = tqdm(
            total=len(rows), initial=sum(len(chunks[i]) for i in done), unit="row", desc="constitution",
            disable=not progress, dynamic_ncols=True,
        )
        for index, chunk in enumerate(chunks):
            if index not in done:
                done[index] = self._revise_chunk(index, chunk)
                self._write(index, done[index])
                bar.update(len(chunk))
        bar.close()
        results: list[dict] = [{}] * len(rows)
        for position, record in zip(order, (record for index in range(len(chunks)) for record in done[index])):
            results[position] = record
        if self._critic is not None and self._critic.prompts_truncated:
            log.warning(
                "constitution stage: %d prompt(s) were longer than the critic's context and lost their beginning",
                self._critic.prompts_truncated,
            )
        return results

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:06d}.json"

    def _read(self, index: int) -> list[dict] | None:
        try:
            return json.loads(self._path(index).read_text())
        except (OSError, ValueError):  # absent, or (impossible with os.replace, but cheap to survive) torn
            return None

    def _write(self, index: int, result: list[dict]) -> None:
        staging = self.folder / f".chunk-{index:06d}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(result))
        os.replace(staging, self._path(index))  # atomic: a chunk file is complete or absent

    # ---------------------------------------------------------------- one chunk
    def _check(self, responses: list[str], rows: list[dict]) -> list[dict[str, list[Finding]]]:
        items = [(code, row["tests"]) for code, row in zip(responses, rows)]
        return check_many(items, list(self.weights), workers=self.settings.workers or os.cpu_count() or 1)

    def _seed(self, chunk: int, *parts: object) -> int:
        digest = hashlib.sha256(json.dumps([self.settings.seed, chunk, *parts]).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def _principle_for(self, row_number: int, step: int) -> Principle:
        principles = self.constitution.principles
        if self.settings.principles == "all":
            return principles[step % len(principles)]
        rng = random.Random(f"{self.settings.seed}:{row_number}:{step}")  # str seeds are stable across runs
        return rng.choice(principles)

    def _generate(self, prompts: list[str], max_new_tokens: int, n: int, seed: int) -> list[list[str]]:
        s = self.settings
        return self.critic.generate(
            prompts, max_new_tokens=max_new_tokens, n=n, do_sample=s.do_sample, temperature=s.temperature,
            top_k=s.top_k, top_p=s.top_p, seed=seed,
        )

    def _revise_chunk(self, chunk: int, rows: list[dict]) -> list[dict]:
        """Provenance of each row of one chunk::

            {"original": response before revision, "response_source": "dataset" | "model",
             "findings_before": {check: [finding, ...]}, "score_before": float,
             "steps": [{"round", "principle", "critique",
                        "candidates": [{"source": "critic" | "fixer", "text", "findings", "score"}],
                        "accepted": index into candidates, or null}],
             "final": the training target, "findings_after", "score_after", "changed": bool}
        """
        s = self.settings
        first_row = chunk * s.batch_size
        if s.response_source == "model":
            prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
            answers = self._generate(prompts, s.revision_tokens, 1, self._seed(chunk, "response"))
            responses = [extract_code(a[0]) for a in answers]
        else:
            responses = [r["output"] for r in rows]
        findings = self._check(responses, rows)
        scores = [score(f, self.weights) for f in findings]
        records = [
            {"original": text, "response_source": s.response_source, "findings_before": _strings(f), "score_before": sc, "steps": []}
            for text, f, sc in zip(responses, findings, scores)
        ]
        steps_per_round = len(self.constitution.principles) if s.principles == "all" else 1
        for step in range(s.rounds * steps_per_round):
            active = [i for i in range(len(rows)) if scores[i] < self.max_score]
            if not active:
                break
            principles = {i: self._principle_for(first_row + i, step) for i in active}

            critiques = {i: "" for i in active}
            proposals: dict[int, list[tuple[str, str]]] = {i: [] for i in active}  # row → [(source, text)]
            if s.candidates:
                prompts = [
                    critique_prompt(rows[i]["instruction"], rows[i]["input"], responses[i], principles[i], _own(findings[i], principles[i]))
                    for i in active
                ]
                for i, out in zip(active, self._generate(prompts, s.critique_tokens, 1, self._seed(chunk, step, "critique"))):
                    critiques[i] = out[0].strip()
                prompts = [
                    revision_prompt(
                        rows[i]["instruction"], rows[i]["input"], responses[i], principles[i],
                        _own(findings[i], principles[i]), critiques[i],
                    )
                    for i in active
                ]
                revisions = self._generate(prompts, s.revision_tokens, s.candidates, self._seed(chunk, step, "revision"))
                for i, outs in zip(active, revisions):
                    proposals[i] += [("critic", extract_code(text)) for text in outs]
            if s.fixers:
                fixed = fix_many([responses[i] for i in active], [_docstring_targets(rows[i], responses[i]) for i in active])
                for i, text in zip(active, fixed):
                    if text != responses[i]:
                        proposals[i].append(("fixer", text))

            flat = [(i, source, text) for i in active for source, text in proposals[i]]
            checked = self._check([text for _, _, text in flat], [rows[i] for i, _, _ in flat])
            candidates: dict[int, list[dict]] = {i: [] for i in active}
            candidate_findings: dict[int, list[dict]] = {i: [] for i in active}
            for (i, source, text), f in zip(flat, checked):
                candidates[i].append({"source": source, "text": text, "findings": _strings(f), "score": score(f, self.weights)})
                candidate_findings[i].append(f)
            for i in active:
                # the gate: the best candidate (the first of equals) replaces the response only if strictly better
                best = max(range(len(candidates[i])), key=lambda j: candidates[i][j]["score"], default=None)
                accepted = best if best is not None and candidates[i][best]["score"] > scores[i] else None
                if accepted is not None:
                    responses[i], findings[i] = candidates[i][accepted]["text"], candidate_findings[i][accepted]
                    scores[i] = candidates[i][accepted]["score"]
                records[i]["steps"].append(
                    {"round": step // steps_per_round, "principle": principles[i].name, "critique": critiques[i],
                     "candidates": candidates[i], "accepted": accepted}
                )
        for record, text, f, sc in zip(records, responses, findings, scores):
            record.update(final=text, findings_after=_strings(f), score_after=sc, changed=text != record["original"])
        return records


def _length(row: dict) -> int:
    return len(row["instruction"]) + len(row["input"]) + len(row["output"])


def _strings(findings: dict[str, list[Finding]]) -> dict[str, list[str]]:
    return {check: [str(f) for f in found] for check, found in findings.items()}


def _own(findings: dict[str, list[Finding]], principle: Principle) -> list[Finding]:
    """The findings a principle's critique prompt quotes: those of its own check."""
    return findings.get(principle.check, []) if principle.check else []


def _docstring_targets(row: dict, code: str) -> dict[str, str]:
    """Which definition the fixer may document, and with what: the row's entry point (or, without one,
    the code's only top-level function or class) gets the first sentence of the instruction."""
    name = row.get("entry_point")
    if not name:
        try:
            tops = [n.name for n in parse_code(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        except (SyntaxError, ValueError):
            return {}
        name = tops[0] if len(tops) == 1 else None
    return {name: summary_docstring(row["instruction"])} if name else {}


def summarize(provenance: list[dict], constitution: Constitution) -> dict:
    """Counts for the printed summary and TensorBoard: rows, proposals and acceptances by source,
    rows violating each checked principle before → after."""
    proposed, accepted = Counter(), Counter()
    for record in provenance:
        for step in record["steps"]:
            proposed.update(c["source"] for c in step["candidates"])
            if step["accepted"] is not None:
                accepted[step["candidates"][step["accepted"]]["source"]] += 1
    violations = {
        p.name: {
            "before": sum(bool(r["findings_before"][p.check]) for r in provenance),
            "after": sum(bool(r["findings_after"][p.check]) for r in provenance),
        }
        for p in constitution.principles
        if p.check
    }
    return {
        "rows": len(provenance),
        "rows_reviewed": sum(bool(r["steps"]) for r in provenance),
        "rows_changed": sum(r["changed"] for r in provenance),
        "proposed": dict(proposed),
        "accepted": dict(accepted),
        "violations": violations,
        "mean_score_before": round(sum(r["score_before"] for r in provenance) / max(len(provenance), 1), 4),
        "mean_score_after": round(sum(r["score_after"] for r in provenance) / max(len(provenance), 1), 4),
    }


def format_summary(summary: dict) -> str:
    """The summary as printed after the stage."""
    proposed, accepted = summary["proposed"], summary["accepted"]
    lines = [
        f"  rows: {summary['rows']}, of which {summary['rows_reviewed']} reviewed (the others pass every check) "
        f"and {summary['rows_changed']} changed",
        "  revisions proposed / accepted: "
        + ", ".join(f"{source} {proposed.get(source, 0)} / {accepted.get(source, 0)}" for source in ("critic", "fixer")),
        f"  mean score: {summary['mean_score_before']} -> {summary['mean_score_after']}",
        "  rows violating each principle, before -> after:",
    ]
    lines += [f"    {name:14s} {v['before']:6d} -> {v['after']:6d}" for name, v in summary["violations"].items()]
    return "\n".join(lines)
