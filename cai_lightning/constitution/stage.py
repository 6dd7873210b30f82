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

Some of each row's unit tests are held back from the critic (:func:`checks.split_tests`, seeded by the
row and ``seed``): the prompts quote only the shown ones, and a failure's evidence never quotes a
held-back test, but every score — the gate, the findings before and after — runs them all, so a revision
that special-cases the tests it was shown fails the gate. A row that still fails a ``must_pass`` check
after its rounds is reported (and dropped from the data by the datamodule with ``on_failure: drop``).

Rows are processed in chunks of ``batch_size`` rows of similar length. Each finished chunk is written atomically to the stage's
folder as ``chunk-NNNNNN.json`` (the provenance of its rows); a re-run after a kill — SIGKILL included —
reads the finished chunks and does only the rest. Every random draw is seeded from ``(seed, chunk, step)``
and never from the global RNG, so the resumed result is identical to an uninterrupted run's, and so is
the result of several processes sharing the chunks out (DDP ranks, or two runs on one cache: a lock per
chunk, see :meth:`ConstitutionStage.run`).

Why one long module: the stage's loop (rounds, gate, provenance) and its resumable chunk cache are one
contract; the checks, fixers, guards, prompts and report it calls are modules of their own.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import json
import logging
import os
import random
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from cai_lightning.constitution import generated_tests, guards
from cai_lightning.constitution.checks import Finding, UnitTests, check_many, parse_code, split_tests
from cai_lightning.constitution.docstrings import summary_docstring
from cai_lightning.constitution.fixers import fix_many
from cai_lightning.constitution.critic import Critic
from cai_lightning.constitution.principles import Constitution, Principle
from cai_lightning.constitution.prompts import critique_prompt, extract_code, revision_prompt
from cai_lightning.constitution.report import summarize
from cai_lightning.errors import ConfigError
from cai_lightning.pretrained import process_gone
from cai_lightning.prompts import format_prompt
from cai_lightning.settings import Revise

log = logging.getLogger(__name__)

STAGE_FORMAT = 9  # bump when what a chunk file holds, or how it is computed, changes (9: agreed tests, reply format)
MAX_COUNTED_FINDINGS = 99


def score(findings: dict[str, list], weights: dict[str, float]) -> float:
    """Sum of the weights of the checks without findings, less 0.01 per finding (at most 99 counted)."""
    passed = sum(weight for check, weight in weights.items() if not findings[check])
    count = min(sum(len(f) for f in findings.values()), MAX_COUNTED_FINDINGS)
    return round(passed - 0.01 * count, 4)


def stage_fingerprint(rows: list[dict], constitution: Constitution, critic: dict, settings: Revise, device: str) -> str:
    """Key of the stage's folder: the rows, the constitution, the critic's identity, every setting that
    changes the result, and the device type (CPU and GPU sample differently). ``workers`` and ``lookup`` are
    left out (they change how fast, not what), and so is ``critic``: the identity says which model it is,
    however it was named.
    ``must_pass`` and ``on_failure`` leave the chunks as they are but decide which rows are trained on;
    they are in because the datamodule's cache key reaches the stage's settings through this key."""
    from importlib.metadata import version

    rows_digest = hashlib.sha256()
    for row in rows:
        rows_digest.update(json.dumps([row[k] for k in ("instruction", "input", "output", "tests", "entry_point")]).encode())
    inputs = {
        "format": STAGE_FORMAT,
        "rows": rows_digest.hexdigest(),
        "constitution": [asdict(p) for p in constitution.principles],
        "critic": critic,
        # the critic setting is left out: its identity is in (null, `random` and a name can be the same critic)
        # verified_pairs picks pairs from the chunks and is in the datamodule's key instead
        "settings": {
            k: v for k, v in asdict(settings).items()
            if k not in ("workers", "device", "splits", "critic", "verified_pairs", "lookup")
        },
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

    Raises :class:`ConfigError` when ``settings.must_pass`` names something that is not a principle
    of ``constitution`` with a check (or the name of such a check).
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
        self.must_pass = must_pass_checks(settings.must_pass, constitution)

    @property
    def critic(self) -> Critic:
        if self._critic is None:
            self._critic = self._load_critic()
        return self._critic

    # ---------------------------------------------------------------- driver
    def run(self, rows: list[dict], progress: bool = True) -> list[dict]:
        """Provenance for every row, in order (see :meth:`_revise_chunk` for its fields).

        Finished chunks are read from ``folder``; missing ones are computed and saved one by one. Processes
        sharing the folder (DDP ranks, or two runs on the same cache) share the work: a chunk is revised
        under an exclusive lock on its ``chunk-NNNNNN.lock`` file, so each is revised once; a process first
        takes the chunks no one holds, then waits for the others' (a holder that dies releases its lock,
        and the chunk is revised by whoever waits for it). The locks are ``flock``s: on several hosts the
        folder must be on a file system that supports them across hosts. ``chunks_revised`` lists the
        chunks this process revised."""
        from tqdm.auto import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_torn_writes(self.folder)
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
        # rows done, rows/min and the ETA, moved on within a chunk as its phases finish (a chunk of a 0.5B
        # critic on a CPU is minutes): the rate is of rows finished, so the ETA is too
        bar = tqdm(
            total=len(rows), initial=sum(len(chunks[i]) for i in done), unit="row", desc="constitution",
            disable=not progress, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.1f}/{total} rows "
            "[{elapsed}<{remaining}, {rate_fmt}]", unit_scale=False,
        )
        self.chunks_revised = []
        pending = [index for index in range(len(chunks)) if index not in done]
        for wait in (False, True):  # first the chunks no one holds, then (waiting) those others held
            held_elsewhere = []
            for index in pending:
                with _chunk_lock(self.folder / f"chunk-{index:06d}.lock", wait) as locked:
                    if not locked:
                        held_elsewhere.append(index)
                        continue
                    result = self._read(index)  # finished by another process since this one looked
                    shown = [0.0]  # of this chunk's rows, on the bar already

                    def advance(fraction: float, size: int = len(chunks[index])) -> None:
                        bar.update(fraction * size - shown[0])
                        bar.n = round(bar.n, 6)  # the fractions' rounding must not carry the bar past its total
                        shown[0] = fraction * size

                    if result is None or len(result) != len(chunks[index]):
                        result = self._revise_chunk(index, chunks[index], advance)
                        self._write(index, result)
                        self.chunks_revised.append(index)
                done[index] = result
                advance(1.0)
            if held_elsewhere and not wait:
                print(f"Constitution stage: {len(held_elsewhere)} chunk(s) are being revised by another process; waiting for them")
            pending = held_elsewhere
        bar.close()
        results: list[dict] = [{}] * len(rows)
        for position, record in zip(order, (record for index in range(len(chunks)) for record in done[index])):
            results[position] = record
        write_revisions(self.folder / "revisions.jsonl", rows, results)
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
        _write_atomic(self._path(index), result)

    def check_only(self, rows: list[dict]) -> list[dict[str, list[str]]]:
        """The findings of every check on each row's ``output``, run with all its tests, nothing revised:
        for the splits the model is scored on, so that the user knows their quality. Kept in ``folder``
        under a digest of the outputs and tests, so a re-run reads them instead of checking again."""
        digest = hashlib.sha256(json.dumps([[r["output"], r["tests"]] for r in rows]).encode()).hexdigest()[:16]
        path = self.folder / f"checked-{digest}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not checked yet
            pass
        tests = [UnitTests(r["tests"], entry_point=r.get("entry_point") or "") for r in rows]
        findings = [_strings(f) for f in self._check([r["output"] for r in rows], tests)]
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, findings)
        return findings

    def summarize(self, provenance: list[dict]) -> dict:
        """:func:`summarize` with this stage's must-pass checks and rounds."""
        return summarize(provenance, self.constitution, self.must_pass, self.settings.rounds)

    # ---------------------------------------------------------------- one chunk
    def _check(self, responses: list[str], tests: list[str | UnitTests]) -> list[dict[str, list[Finding]]]:
        """Every check on each ``(response, tests)``; the tests run whole, held-back ones included."""
        items = list(zip(responses, tests))
        return check_many(items, list(self.weights), workers=self.settings.workers or os.cpu_count() or 1)

    def _seed(self, chunk: int, *parts: object) -> int:
        digest = hashlib.sha256(json.dumps([self.settings.seed, chunk, *parts]).encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def _principle_for(self, row_number: int, step: int, findings: Mapping[str, list], parses: bool = True) -> Principle | None:
        """The principle a row is revised under at ``step``, among those it violates (its check has
        findings; one without a check only with ``open_ended``); None: the row sits this step out. Code
        that does not parse is a finding of every check, but repairing it is correctness's business: the
        only principle it violates, when the constitution has one."""
        principles = self.constitution.principles
        violated = [p for p in principles if (findings.get(p.check) if p.check else self.settings.open_ended)]
        if not parses and any(p.check == "correctness" for p in violated):
            violated = [p for p in violated if p.check == "correctness"]
        if self.settings.principles == "all":
            principle = principles[step % len(principles)]
            return principle if principle in violated else None
        if self.settings.principles == "repair" or any(p.check in self.must_pass for p in violated):
            violated = [p for p in violated if p.check in self.must_pass]  # repaired before it is polished
        if not violated:
            return None
        rng = random.Random(f"{self.settings.seed}:{row_number}:{step}")  # str seeds are stable across runs
        return rng.choice(violated)

    def _generate(
        self, prompts: list[str], max_new_tokens: int, n: int, seed: int, code: bool = False, copies: bool = False
    ) -> list[list[str]]:
        """``code``: only the reply's first code block is read (:func:`extract_code`), so the own decoder ends
        the reply at its closing fence. ``copies``: the replies mostly copy their prompts (revisions), so
        ``settings.lookup`` applies."""
        s = self.settings
        return self.critic.generate(
            prompts, max_new_tokens=max_new_tokens, n=n, do_sample=s.do_sample, temperature=s.temperature,
            top_k=s.top_k, top_p=s.top_p, seed=seed, decoder=s.decoder, stop_after_code_block=code and s.decoder == "own",
            lookup=s.lookup if copies else 0,
        )

    def _revise_chunk(self, chunk: int, rows: list[dict], advance: Callable[[float], None] = lambda fraction: None) -> list[dict]:
        """Provenance of each row of one chunk::

            {"original": response before revision, "response_source": "dataset" | "model",
             "tests_held_back": [lines of the row's tests held back from the critic],
             "correctness_basis": "tests" | "executed" | "parsed",
             "behaviour_before": how the response ran (guards.Behaviour.to_dict()),
             "agreed_tests": {call: expected result} (data.revise.generated_tests), "agreed_tests_missed": int,
             "generated_tests": {"written": {call: [results a test expects]}, "solutions": [{call: outcome}]},
             "findings_before": {check: [finding, ...]}, "score_before": float,
             "steps": [{"round", "principle", "critique",
                        "candidates": [{"source": "critic" | "fixer", "text", "findings", "score",
                                        "refused": why a guard refused it (guards.GUARDS, or "worse",
                                                   "deletion", "not_better") or null,
                                        "behaviour": how it behaved against the response}],
                        "accepted": index into candidates, or null}],
             "final": the training target, "findings_after", "score_after", "changed": bool}

        ``advance(fraction)`` is told how much of the chunk is done as its phases finish (a progress bar).
        """
        s = self.settings
        first_row = chunk * s.batch_size
        workers = s.workers or os.cpu_count() or 1
        if s.response_source == "model":
            prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
            answers = self._generate(prompts, s.revision_tokens, 1, self._seed(chunk, "response"), code=True)
            responses = [extract_code(a[0]) for a in answers]
        else:
            responses = [r["output"] for r in rows]
        tests = [split_tests(r["tests"], r.get("task_id") or r["instruction"], s.seed, r.get("entry_point") or "") for r in rows]
        inputs = [guards.inputs_for(text, r["input"]) for text, r in zip(responses, rows)]
        generated = [{} for _ in rows]
        if s.generated_tests:
            generated = self._generated_tests(chunk, rows, responses, tests, inputs, workers)
            inputs = [given.with_expected(g["agreed"]) if g else given for given, g in zip(inputs, generated)]
        behaviours = guards.observe(responses, inputs, workers)
        findings = self._with_execution(self._check(responses, tests), behaviours, tests, inputs)
        scores = [score(f, self.weights) for f in findings]
        records = [
            {"original": text, "response_source": s.response_source, "tests_held_back": sorted(t.held_back),
             "correctness_basis": _basis(t, b), "behaviour_before": b.to_dict(),
             "agreed_tests": {call: outcome[2:] for call, outcome in given.expected},
             "agreed_tests_missed": len(guards.missed(b, given.expected)),
             "generated_tests": {k: v for k, v in g.items() if k != "agreed"},
             "findings_before": _strings(f), "score_before": sc, "steps": []}
            for text, t, b, f, sc, given, g in zip(responses, tests, behaviours, findings, scores, inputs, generated)
        ]
        steps_per_round = len(self.constitution.principles) if s.principles == "all" else 1
        steps = s.rounds * steps_per_round
        prepared = 0.5 if s.generated_tests else 0.1  # share of the chunk's time; tests and solutions are generation too
        advance(prepared)
        for step in range(steps):
            principles = {
                i: principle for i in range(len(rows))
                if (principle := self._principle_for(first_row + i, step, findings[i], behaviours[i].script != "broken")) is not None
            }
            active = list(principles)
            if not active:
                continue

            critiques = {i: "" for i in active}
            # row → [(source, code, the critic's whole reply or None)]
            proposals: dict[int, list[tuple[str, str, str | None]]] = {i: [] for i in active}
            if s.candidates:
                prompts = [
                    critique_prompt(
                        rows[i]["instruction"], rows[i]["input"], responses[i], principles[i], _own(findings[i], principles[i]), tests[i]
                    )
                    for i in active
                ]
                for i, out in zip(active, self._generate(prompts, s.critique_tokens, 1, self._seed(chunk, step, "critique"))):
                    critiques[i] = out[0].strip()
                prompts = [
                    revision_prompt(
                        rows[i]["instruction"], rows[i]["input"], responses[i], principles[i],
                        _own(findings[i], principles[i]), critiques[i], tests[i],
                    )
                    for i in active
                ]
                revisions = self._generate(
                    prompts, s.revision_tokens, s.candidates, self._seed(chunk, step, "revision"), code=True, copies=True
                )
                for i, outs in zip(active, revisions):
                    for text in outs:
                        # the tests a chat model appends are left out; a reply cut inside them is whole before them
                        code = extract_code(text)
                        kept = guards.without_added_tests(responses[i], code)
                        proposals[i].append(("critic", kept, text if kept == code else None))
                advance(prepared + (1 - prepared) * (step + 0.7) / steps)
            if s.fixers:
                fixed = fix_many([responses[i] for i in active], [_docstring_targets(rows[i], responses[i]) for i in active])
                for i, text in zip(active, fixed):
                    if text != responses[i]:
                        proposals[i].append(("fixer", text, None))

            flat = [(i, source, text, reply) for i in active for source, text, reply in proposals[i]]
            refused = [guards.static_refusal(responses[i], text, reply) for i, _, text, reply in flat]
            runnable = [k for k, reason in enumerate(refused) if reason is None]
            ran = dict(zip(runnable, guards.observe([flat[k][2] for k in runnable], [inputs[flat[k][0]] for k in runnable], workers)))
            checked = self._with_execution(
                self._check([text for _, _, text, _ in flat], [tests[i] for i, _, _, _ in flat]),
                [ran.get(k) for k in range(len(flat))], [tests[i] for i, _, _, _ in flat], [inputs[i] for i, _, _, _ in flat],
            )
            candidates: dict[int, list[dict]] = {i: [] for i in active}
            evidence: dict[int, list[tuple[dict, guards.Behaviour | None]]] = {i: [] for i in active}
            for k, ((i, source, text, _), f) in enumerate(zip(flat, checked)):
                verdict, detail = ("", "") if k not in ran else guards.compare(
                    behaviours[i], ran[k], may_fix=principles[i].check == "correctness", expected=inputs[i].expected
                )
                reason = refused[k] or _refusal(responses[i], text, source, verdict, findings[i], f, bool(tests[i].source.strip()))
                candidates[i].append({
                    "source": source, "text": text, "findings": _strings(f), "score": score(f, self.weights),
                    "refused": reason, "behaviour": f"{verdict}: {detail}" if detail else verdict,
                })
                evidence[i].append((f, ran.get(k)))
            for i in active:
                # the gate: among the candidates no guard refused, the best (a tie goes to the fixer, whose
                # candidate keeps behaviour by construction) replaces the response only if strictly better
                for candidate in candidates[i]:
                    if candidate["refused"] is None and candidate["score"] <= scores[i]:
                        candidate["refused"] = "not_better"
                eligible = [j for j, c in enumerate(candidates[i]) if c["refused"] is None]
                accepted = max(eligible, key=lambda j: (candidates[i][j]["score"], candidates[i][j]["source"] == "fixer", -j), default=None)
                if accepted is not None:
                    responses[i], scores[i] = candidates[i][accepted]["text"], candidates[i][accepted]["score"]
                    findings[i], behaviours[i] = evidence[i][accepted]
                records[i]["steps"].append(
                    {"round": step // steps_per_round, "principle": principles[i].name, "critique": critiques[i],
                     "candidates": candidates[i], "accepted": accepted}
                )
            advance(prepared + (1 - prepared) * (step + 1) / steps)
        for record, text, f, sc in zip(records, responses, findings, scores):
            record.update(final=text, findings_after=_strings(f), score_after=sc, changed=text != record["original"])
        return records

    def _with_execution(
        self, found: list[dict[str, list[Finding]]], behaviours: Sequence[guards.Behaviour | None], tests: Sequence[UnitTests],
        inputs: Sequence[guards.Inputs],
    ) -> list[dict[str, list[Finding]]]:
        """``correctness`` of a row without unit tests means more than "parses": how running it failed,
        and the agreed generated tests it misses (:func:`guards.execution_findings`), join its findings,
        so the critique quotes them and a revision that no longer fails scores higher. A row with tests is
        judged by its tests alone."""
        if "correctness" not in self.weights:
            return found
        for f, behaviour, t, given in zip(found, behaviours, tests, inputs):
            if behaviour is not None and not t.source.strip():
                f["correctness"] = [*f["correctness"], *guards.execution_findings(behaviour, given.expected)]
        return found

    def _generated_tests(
        self, chunk: int, rows: list[dict], responses: list[str], tests: list[UnitTests], inputs: list[guards.Inputs],
        workers: int,
    ) -> list[dict]:
        """For each row of a chunk, its generated tests (see :mod:`~cai_lightning.constitution.generated_tests`):
        ``{"agreed": {call: outcome}, "written": {call: [outcomes a test expects]}, "solutions": [{call:
        outcome}, ...]}`` for a row without unit tests whose response defines functions, else ``{}``. The
        critic writes tests and solutions from the instruction and signatures; the solutions run in the sandbox."""
        n = self.settings.generated_tests
        heads = {i: generated_tests.signatures(text) for i, text in enumerate(responses) if not tests[i].source.strip()}
        todo = [i for i, found in heads.items() if found]
        if not todo:
            return [{} for _ in rows]
        asks = [(rows[i]["instruction"], rows[i]["input"], list(heads[i].values())) for i in todo]
        written = self._generate([generated_tests.tests_prompt(*a) for a in asks], self.settings.critique_tokens, n, self._seed(chunk, "tests"))
        solved = self._generate(
            [generated_tests.solution_prompt(*a) for a in asks], self.settings.revision_tokens, n, self._seed(chunk, "solutions"), code=True
        )
        calls = {i: generated_tests.parse_tests(replies, set(heads[i])) for i, replies in zip(todo, written)}
        runs = [(i, extract_code(reply)) for i, replies in zip(todo, solved) for reply in replies]
        outcomes = guards.probe([code for _, code in runs], [list(calls[i]) for i, _ in runs], [inputs[i].setup for i, _ in runs], workers)
        per_row: dict[int, list[dict[str, str]]] = {i: [] for i in todo}
        for (i, _), seen in zip(runs, outcomes):
            per_row[i].append(seen)
        return [
            {"agreed": generated_tests.agreed(calls[i], per_row[i], n), "written": {c: sorted(e) for c, e in calls[i].items()},
             "solutions": per_row[i]} if i in calls else {}
            for i in range(len(rows))
        ]


def write_revisions(path: Path, rows: Sequence[dict], provenance: Sequence[dict]) -> None:
    """Every accepted revision, one JSON line per changed row, for a person (or an audit) to read: the
    row (its position, instruction and input), ``original`` and ``revision`` (the final response), and
    per accepted step its principle, source, behaviour verdict and findings before → after."""
    lines = []
    for position, (row, record) in enumerate(zip(rows, provenance)):
        if not record.get("changed"):
            continue
        steps, findings = [], record["findings_before"]
        for step in record["steps"]:
            if step["accepted"] is None:
                continue
            chosen = step["candidates"][step["accepted"]]
            steps.append({"principle": step["principle"], "source": chosen["source"], "behaviour": chosen.get("behaviour", ""),
                          "findings_before": findings, "findings_after": chosen["findings"]})
            findings = chosen["findings"]
        lines.append(json.dumps({
            "row": position, "instruction": row["instruction"], "input": row["input"], "original": record["original"],
            "revision": record["final"], "principle": ", ".join(s["principle"] for s in steps),
            "source": ", ".join(dict.fromkeys(s["source"] for s in steps)), "correctness_basis": record.get("correctness_basis"),
            "guards": steps,
        }))
    _write_text_atomic(path, "".join(line + "\n" for line in lines))


def _write_atomic(path: Path, data: object) -> None:
    """``data`` as JSON at ``path``, complete or not at all."""
    _write_text_atomic(path, json.dumps(data))


def _write_text_atomic(path: Path, text: str) -> None:
    """``text`` at ``path``, complete or not at all (a kill mid-write leaves a ``.*.tmp`` file)."""
    staging = path.with_name(f".{path.stem}.{socket.gethostname()}-{os.getpid()}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def _remove_torn_writes(folder: Path) -> None:
    """The ``.*.tmp`` files of processes of this host that are gone (killed mid-write); a live process's
    write in progress is left alone."""
    for torn in folder.glob(f".*.{socket.gethostname()}-*.tmp"):
        if process_gone(int(torn.name.rsplit("-", 1)[1].removesuffix(".tmp"))):
            torn.unlink(missing_ok=True)


@contextmanager
def _chunk_lock(path: Path, wait: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created if need be) while the block runs: yields whether it was
    taken; with ``wait`` it always is, once the holder lets go. The kernel releases it when its holder dies."""
    with path.open("a") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _length(row: dict) -> int:
    return len(row["instruction"]) + len(row["input"]) + len(row["output"])


def _strings(findings: dict[str, list[Finding]]) -> dict[str, list[str]]:
    return {check: [str(f) for f in found] for check, found in findings.items()}


def _own(findings: dict[str, list[Finding]], principle: Principle) -> list[Finding]:
    """The findings a principle's critique prompt quotes: those of its own check."""
    return findings.get(principle.check, []) if principle.check else []


def _refusal(
    original: str, text: str, source: str, verdict: str, before: Mapping[str, list], after: Mapping[str, list],
    tested: bool = False,
) -> str | None:
    """Why the gate refuses a candidate that passed the static guards, from how it behaved against the
    response (:func:`guards.compare`) and its findings against the response's; None: it may compete on
    score. A fixer's candidate keeps behaviour by construction, and a row's unit tests are evidence of
    their own (its correctness findings), so neither needs a behaviour run to compare."""
    if verdict == "changed":
        return "behaviour_changed"
    if verdict == "unverified" and source != "fixer" and not tested and not guards.documented_only(original, text):
        return "unverified"
    if any(after.get(check) and not before.get(check) for check in MUST_NOT_REGRESS):
        return "worse"
    fixed_must = any(before.get(check) and not after.get(check) for check in MUST_NOT_REGRESS)
    if guards.code_size(text) < guards.code_size(original) and verdict != "fixed" and not fixed_must:
        return "deletion"  # fewer findings from less code is not progress
    return None


MUST_NOT_REGRESS = ("correctness", "safety")
"""Checks a kept revision may never start failing, whatever else it improves."""


def _basis(tests: UnitTests, behaviour: guards.Behaviour) -> str:
    """What ``correctness`` meant for a row: its unit ``tests`` ran, the code was ``executed`` (its run
    or a probe said something), or it was only ``parsed`` (every run ended unknown)."""
    if tests.source.strip():
        return "tests"
    if behaviour.script in ("clean", "failed") or any(v.startswith("=") for v in behaviour.probes.values()):
        return "executed"
    return "parsed"


def _docstring_targets(row: dict, code: str) -> dict[str, str]:
    """Which definition the fixer may document, and with what: the row's entry point (or, without one,
    the code's only top-level function or class) gets what the instruction says it does, as
    :func:`summary_docstring` writes it ("" when it cannot: nothing is added)."""
    name = row.get("entry_point")
    if not name:
        try:
            tops = [n.name for n in parse_code(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        except (SyntaxError, ValueError):
            return {}
        name = tops[0] if len(tops) == 1 else None
    return {name: summary_docstring(row["instruction"], name)} if name else {}


def must_pass_checks(names: Sequence[str], constitution: Constitution) -> tuple[str, ...]:
    """The checks behind ``names`` (``data.revise.must_pass``: principle names, or the names of their
    checks), in order. Raises :class:`ConfigError` for a name that is neither."""
    checked = {p.name: p.check for p in constitution.principles if p.check}
    checks = []
    for name in names:
        check = checked.get(name) or (name if name in checked.values() else None)
        if check is None:
            raise ConfigError(
                f"data.revise.must_pass: {name!r} is not a principle with a check in the constitution "
                f"{constitution.source}; choose from {', '.join(checked) or 'none'}, or [] for none"
            )
        checks.append(check)
    return tuple(dict.fromkeys(checks))


