"""The settings that configs name and checkpoints keep in their hyperparameters: how a model generates
(``model.generation``, ``ExecutionEval(generation=...)``) and how the constitution stage revises
(``data.revise``).

Frozen dataclasses that check their values as they are made (a bad value is one :class:`ConfigError`
naming the flag). This module imports nothing of the project but its errors, so every layer can take its
settings from here: the stage, the model, the callbacks, and ``pretrained.py``, which allows exactly these
classes when it reads a checkpoint with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cai_lightning.errors import ConfigError


@dataclass(frozen=True)
class Generation:
    """Generation settings: beam search by default (``predict``, the sample callback), sampling when
    ``do_sample`` (execution-based evaluation draws ``n`` samples per task).

    Args:
        num_beams: Beams kept per prompt (1 = greedy, or plain sampling with ``do_sample``).
        num_return_sequences: Completions returned per prompt, best first; at most ``num_beams`` unless
            ``do_sample``.
        do_sample: Sample instead of searching (``temperature``, ``top_p`` apply).
        temperature: Softmax temperature when sampling.
        top_p: Nucleus sampling mass when sampling (1.0 = off).
        max_new_tokens: Tokens generated after the prompt. Takes precedence over ``max_length``.
        max_length: Prompt + generated tokens (counts the prompt!); used only when ``max_new_tokens`` is null.
        no_repeat_ngram_size: Forbid repeating any n-gram of this size; 0 = off. Off by default for
            code: real Python repeats n-grams all the time (``self.``, indentation, ``return``), and
            forbidding them forces wrong code.
        length_penalty: Exponent on length in beam scores; > 1 favours longer completions.
        early_stopping: Stop a prompt's search once ``num_beams`` finished candidates exist.
    """

    num_beams: int = 4
    num_return_sequences: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int | None = 128
    max_length: int | None = None
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool = True

    def __post_init__(self) -> None:
        if self.num_return_sequences > self.num_beams and not self.do_sample:
            raise ConfigError(
                f"model.generation.num_return_sequences ({self.num_return_sequences}) must not exceed "
                f"model.generation.num_beams ({self.num_beams})"
            )
        if self.max_new_tokens is None and self.max_length is None:
            raise ConfigError("set model.generation.max_new_tokens or model.generation.max_length")


RANDOM_CRITIC_NAME = "random"  # data.revise.critic value: the tiny random GPT-2


@dataclass(frozen=True)
class Revise:
    """Settings of the constitution stage (``data.revise`` in the CLI).

    Args:
        critic: Hugging Face causal LM (name or folder) that writes critiques and revisions; ``null``: the
            pretrained model being fine-tuned (``model.pretrained``), or — when that is null too — a tiny
            randomly initialised GPT-2, which writes noise; ``random``: that random GPT-2 whatever the
            model is (the offline default says so, so that its DPO run, which starts from a pretrained
            export, reuses the same stage and its pairs).
        response_source: ``dataset`` revises the dataset's ``output``; ``model`` first has the critic
            answer the prompt and revises its answer (the Constitutional-AI way).
        rounds: Critique → revision rounds per row. Each round revises the response the previous one
            ended with: its accepted candidate, or the same response when none was accepted.
        principles: ``sample`` draws one principle per round (seeded) among those the row violates (its
            check has findings), among those of ``must_pass`` first when it violates one (a broken or
            unsafe program is repaired before it is polished); ``all`` goes through every principle the
            row violates in turn in each round; ``repair`` draws only among the ``must_pass`` principles
            the row violates: a row that passes them is left as it is (no critic, no fixer), so a
            slow critic's time goes to broken and unsafe rows only. A row that violates none is not sent to the critic.
        open_ended: Also revise under the principles without a check (clarity, efficiency), for every
            row. Nothing but the critic's word would say such a revision is better: it is kept only when
            its behaviour is proven unchanged and its findings fewer, like any other.
        candidates: Revisions the critic proposes per step (0: no critic at all, fixers only).
        generated_tests: For a row without unit tests whose code defines functions, the critic also
            writes this many test replies and as many independent solutions, from the instruction and the
            functions' signatures only; a call's result is *agreed* when a test expects it and a strict
            majority of the solutions (at least two) return it, and the code's misses are correctness
            findings (:mod:`~cai_lightning.constitution.generated_tests`). It lets a fix of code that runs
            cleanly but wrongly (an off-by-one) be proven. 0: off; else at least 2, sampled. Costs about twice
            the critic's generation.
        fixers: Also propose the response as fixed automatically (ruff's safe fixes and formatter, and a
            docstring from the instruction for the entry point), behaviour unchanged.
        splits: Which splits are revised; the others keep the dataset's output.
        batch_size: Rows per batched generation call (and per chunk saved for resuming). A decoding step
            reads all of the critic's weights whatever the batch, so more rows share each read; measured
            on 2 CPU cores, 32 rows ran the own decoder 1.24x as fast a row as 16 (SmolLM2).
        critique_tokens: New tokens per critique.
        revision_tokens: New tokens per revision (and per response with ``response_source: model``).
        do_sample: Sample (``temperature``, ``top_k``, ``top_p``) instead of greedy decoding.
        temperature: Softmax temperature when sampling.
        top_k: Only the ``top_k`` most likely tokens can be drawn when sampling (0: any token).
        top_p: Nucleus sampling mass when sampling.
        seed: Seeds principle sampling and generation.
        decoder: ``own``: :func:`~cai_lightning.generation.decode` (prompts grouped by length, a revision prompt
            encoded from where it leaves its critique prompt, a reply read for its code ending at its code
            block's closing fence, finished replies dropped from the batch); ``transformers``: transformers'
            ``generate`` on left-padded prompts, every reply to EOS or the token limit (the stage's decoder
            before, kept to measure against). Greedy, both write the same text up to rounding; sampled, the
            same distribution with other draws.
        lookup: With the ``own`` decoder, prompt-lookup decoding of revisions (a revision mostly copies the
            response in its prompt): each step feeds up to ``lookup`` tokens guessed from the prompt and keeps
            those the critic writes itself, so a step can write several tokens. The same text as without (each
            kept token is drawn as it would have been; in bf16, up to rounding); 0: off. It pays where a
            decoding step costs about the same for more tokens fed (a GPU; a CPU's small batches), and costs
            the arithmetic of the guesses not kept where a step is bound by it (a CPU's large batches): see
            docs/generation.md. Does not change the stage's cache key.
        workers: Sandbox processes running unit tests at once (``null``: one per CPU core). Does not
            change the result.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
        must_pass: Principles (or check names) a revised row must pass in the end: one that still fails
            any of them is dropped or kept as ``on_failure`` says, counted and listed in the summary, and
            never the chosen side of a preference pair. Each must be a principle of the constitution that
            has a check (checked when the stage is built). ``[]``: none.
        on_failure: ``drop`` removes the rows of ``splits`` that still fail a ``must_pass`` check from
            their split before tokenizing; ``keep`` trains on them as they are.
        verified_pairs: Also write execution-verified preference pairs (DPO data): in a step whose
            candidates include one that passes every ``must_pass`` check and one that fails one, the best
            passing candidate against the best failing one
            (:func:`~cai_lightning.constitution.report.verified_pairs`). Counted in the summary either way;
            changes the preference split only, not the revised rows.
    """

    critic: str | None = None
    response_source: Literal["dataset", "model"] = "dataset"
    rounds: int = 1
    principles: Literal["sample", "all", "repair"] = "sample"
    open_ended: bool = False
    candidates: int = 2
    generated_tests: int = 0
    fixers: bool = True
    splits: tuple[str, ...] = ("train",)
    batch_size: int = 32
    critique_tokens: int = 64
    revision_tokens: int = 256
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95
    seed: int = 0
    decoder: Literal["own", "transformers"] = "own"
    lookup: int = 0
    workers: int | None = None
    device: str = "auto"
    must_pass: tuple[str, ...] = ("correctness", "safety")
    on_failure: Literal["drop", "keep"] = "drop"
    verified_pairs: bool = False

    def __post_init__(self) -> None:
        for name in ("rounds", "batch_size", "critique_tokens", "revision_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.revise.{name} must be at least 1, got {getattr(self, name)}")
        if self.lookup < 0:
            raise ConfigError(f"data.revise.lookup must be 0 (off) or more, got {self.lookup}")
        if self.top_k < 0:
            raise ConfigError(f"data.revise.top_k must be 0 (any token) or more, got {self.top_k}")
        if self.candidates < 0:
            raise ConfigError(f"data.revise.candidates must be 0 or more, got {self.candidates}")
        if self.candidates == 0 and not self.fixers:
            raise ConfigError("data.revise.candidates is 0 and data.revise.fixers is false: nothing would propose a revision")
        if self.generated_tests == 1 or self.generated_tests < 0:
            raise ConfigError(
                f"data.revise.generated_tests must be 0 (off) or at least 2 (agreement needs two solutions), got {self.generated_tests}"
            )
        if self.generated_tests and not self.do_sample:
            raise ConfigError(
                "data.revise.generated_tests needs data.revise.do_sample: true: greedy decoding would write the same "
                "solution each time, and a solution agreeing with itself is no agreement"
            )
        if self.generated_tests and self.candidates == 0:
            raise ConfigError("data.revise.generated_tests needs the critic, but data.revise.candidates is 0")
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
        if self.decoder not in ("own", "transformers"):
            raise ConfigError(f"data.revise.decoder must be own or transformers, got {self.decoder!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"data.revise.workers must be at least 1, got {self.workers}")
        if len(set(self.must_pass)) != len(self.must_pass):
            raise ConfigError(f"data.revise.must_pass names a principle twice: {list(self.must_pass)}")
        if self.on_failure not in ("drop", "keep"):
            raise ConfigError(f"data.revise.on_failure must be drop or keep, got {self.on_failure!r}")

    @property
    def uses_critic(self) -> bool:
        return self.candidates > 0 or self.response_source == "model"
