"""Constitution stage throughput: the batched stage against the seed's way, side by side in one run.

    python bench/constitution_throughput.py [--rows 64] [--model tiny|gpt2] [--batch-size 16] [--repeats 1] [--device cpu]
        [--smoke]

Defaults are the offline default's settings (configs/default.yaml: critique 32, revision 192 tokens, 2 candidates).

Both rows run the same stage code on the same rows with the same critic (same weights, same seed) and
the same settings: the response is the critic's own answer (``response_source: model``, so every row is
reviewed), one round, a critique and ``--candidates`` revisions per row, the fixer candidate, all checks.
Only batching differs:

  seed's way (one at a time)   batch_size 1, one sequence per ``generate`` call (each revision
                               candidate on its own, as the seed made its one revision), 1 sandbox
                               worker: nothing batched anywhere
  batched                      batch_size ``--batch-size`` rows (left-padded prompts, KV cache, all
                               candidates of all rows in one ``generate``), one sandbox worker per core

The critic is randomly initialised (no Hub access here): ``tiny`` is the offline default's critic,
``gpt2`` a GPT-2 small-sized model (124M parameters, GPT-2's compute per token; in bf16 on a GPU, as
``Critic.load`` would load it there). A random critic does not
stop early, so every generation runs to its token limit in both rows alike. Each row starts from an
empty cache folder. ``speedup`` is rows/s over the seed's way. With ``--repeats`` above 1 the two rows
run in turn, repeatedly, and each reports its median time and its range (a shared VM drifts by 10-15%).
``--smoke`` runs both rows on 2 rows with a few tokens per generation, in seconds (CI); its figures mean nothing.

Evaluation's generation (``ExecutionEval``), with ``--eval MODEL`` (``tiny``: a random 2-layer GPT-2; or a
pretrained name such as ``smollm2-135m-instruct``, prompted through its chat template as
``configs/smollm2.yaml`` does), on the first ``--tasks`` tasks of the shipped test split, ``--samples`` per task
sampled at temperature 0.8 (the configs' settings), ``--eval-tokens`` at most, bf16 autocast on a CPU with
native bf16 (as ``bf16-mixed`` runs it):

  one task at a time            transformers' ``generate`` per task, every reply to its EOS or the token
                                limit (evaluation's path before batching)
  batched                       ``--eval-batch`` tasks per call, of similar prompt length, by
                                ``cai_lightning.generation.decode``: each reply ending at its fenced block's
                                closing fence (``extract_code``), ended replies leaving the batch

Both draw each task's samples from the task's own seed (the batched path one generator a sample, so the two
draw different samples of the same distribution). Then, greedy, on the first ``--greedy-tasks`` tasks: the
share of tasks whose scored code (``extract_code``) is the same in both (below 1 only by rounding: padding
in a batch, bf16).

    python bench/constitution_throughput.py --eval smollm2-135m-instruct [--tasks 16] [--samples 5]

The stage's decoders, with ``--critic NAME`` (a pretrained critic: ``qwen2.5-coder-0.5b-instruct``,
``smollm2-135m-instruct``), on ``--rows`` shipped rows answered by the critic and reviewed (as above),
with ``configs/coder-critic.yaml``'s generation settings (critique 96, revision 256 tokens, 2 candidates, sampled
at temperature 0.7), both on the same critic:

  transformers generate         ``data.revise.decoder: transformers``: left-padded prompts in one ``generate``
                                per call, every reply to EOS or the token limit (the stage's path before)
  own decode                    ``data.revise.decoder: own`` (``cai_lightning.generation.decode``)
  own decode, lookup N          the same with ``data.revise.lookup: N`` (``--lookup``, default 4; 0 leaves this
                                row out): revisions decoded with N prompt-lookup guesses a step

Each prints seconds a row, the seconds spent generating, generated tokens/s (the own decoder generates fewer:
a reply read for its code ends at the closing fence) and the ratio of rows/s, with the stage's results
(accepted candidates by source, rows changed, rows still failing a must-pass check, refusals). Then, on the
first ``--greedy-rows`` rows, both decoders greedy (one candidate): the share of answers, critiques and
revisions written the same (fp32: the same up to rounding; bf16 on a CPU with native bf16: reported).
Then, per kind of the own decoder's calls (answers, critiques, revisions): the replies' median length, the
share that ran to the token limit, the decoding steps the calls took (each as many as its longest reply), and
the same replayed with prompt-lookup guesses (:func:`lookup_steps`: the last 2 tokens looked up in the
prompt and the reply so far, the 4 that followed fed with the step's token, kept where they are what the
model wrote, as ``data.revise.lookup: 4`` decodes): the steps, and the tokens fed to the model, that
lookup decoding would have taken to write the same replies. Last, what one decoding step of the own decoder costs with 8, 16, 32 and 64 rows in the batch
(``--step-batches``; critique prompts, greedy, ``--step-tokens`` steps each): where it grows little with the
rows, a step is bound by reading the weights, and only fewer steps or more rows per step make the stage
faster; where it grows in proportion to the rows, a step is bound by the arithmetic, and only fewer tokens
fed make it faster.

    python bench/constitution_throughput.py --critic qwen2.5-coder-0.5b-instruct [--rows 32] [--batch-size 16]
        [--own-batch-size 32] [--greedy-rows 8] [--repeats 1]

With ``--repeats`` above 1 the two decoders run in turn, repeatedly; each reports its median run and the
range. ``--own-batch-size`` gives the own decoder its own rows per call (default: ``--batch-size``): it gains more from a
larger batch than ``generate``, which runs every sequence of a call until the longest one ends.

Why one long module: its three modes (the stage, the stage's decoders, evaluation) share the rows, the
critic loading and the timing, and the docs read each mode's table from the one command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.critic import RANDOM_CRITIC, Critic
from cai_lightning.constitution.report import summarize
from cai_lightning.constitution.stage import ConstitutionStage
from cai_lightning.settings import Revise
from cai_lightning.data.records import builtin_files
from cai_lightning.data.tokenization import train_bpe_tokenizer
from cai_lightning.prompts import format_prompt
from harness import record

NAME = "constitution_throughput"


def shipped_rows() -> list[dict]:
    """The shipped task set, every row of its four files."""
    return [json.loads(line) for path in builtin_files() for line in Path(path).read_text().splitlines() if line.strip()]


def load_rows(n: int) -> list[dict]:
    rows = shipped_rows()
    return rows[:: max(1, len(rows) // n)][:n]  # spread over the four task files


def build_critic(kind: str, rows: list[dict], device: str) -> Critic:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_bpe_tokenizer((format_prompt(r["instruction"], r["input"]) + r["output"] for r in rows), 2048)
    if kind == "tiny":
        return Critic.random(tokenizer, seed=0, device=device)
    config = GPT2Config(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Critic(GPT2LMHeadModel(config).to(device, dtype), tokenizer, "random gpt2 (124M)")


class OneAtATime:
    """The critic, made to generate one sequence per call (the seed's way)."""

    def __init__(self, critic: Critic) -> None:
        self.critic = critic
        self.name = critic.name

    @property
    def prompts_truncated(self) -> int:
        return self.critic.prompts_truncated

    def generate(self, prompts: list[str], *, n: int = 1, seed: int = 0, **settings) -> list[list[str]]:
        return [
            [self.critic.generate([prompt], n=1, seed=seed + 7919 * p + j, **settings)[0][0] for j in range(n)]
            for p, prompt in enumerate(prompts)
        ]


class Counting:
    """The critic, counting the tokens it generates and the seconds it spends generating."""

    def __init__(self, critic: Critic) -> None:
        self.critic, self.name = critic, critic.name
        self.tokens, self.seconds = 0, 0.0

    @property
    def prompts_truncated(self) -> int:
        return self.critic.prompts_truncated

    def generate(self, prompts: list[str], **settings) -> list[list[str]]:
        start = time.perf_counter()
        out = self.critic.generate(prompts, **settings)
        self.seconds += time.perf_counter() - start
        tokenizer = self.critic.tokenizer
        self.tokens += sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for texts in out for text in texts)
        return out


@contextmanager
def recording_calls(calls: list[dict]):
    """Each call the critic makes of the own decoder (``generation.decode``), appended to ``calls``: its prompts
    and replies (token ids), ``n``, token limit and whether replies stop at their code block's end."""
    import cai_lightning.constitution.critic as critic_module

    decode = critic_module.decode

    def recorded(model, prompts, **settings):
        replies = decode(model, prompts, **settings)
        calls.append({"prompts": [list(p) for p in prompts], "replies": replies, "n": settings.get("n", 1),
                      "limit": settings["max_new_tokens"], "stop": settings.get("stop") is not None})
        return replies

    critic_module.decode = recorded
    try:
        yield calls
    finally:
        critic_module.decode = decode


def lookup_steps(context: list[int], reply: list[int], ngram: int = 2, draft: int = 4) -> tuple[int, int]:
    """Decoding steps and tokens fed to the model to write ``reply`` after ``context`` with prompt-lookup
    guesses, as ``decode(lookup=draft)`` makes them (:class:`~cai_lightning.generation.PromptLookup`): the
    first token is written alone (from the prompt's encoding); then each step feeds the last token with up
    to ``draft`` guesses and keeps those the model wrote, plus the model's own next token. Without guesses:
    ``len(reply)`` steps, one token each."""
    from cai_lightning.generation import PromptLookup

    guesses = PromptLookup(context, ngram)
    steps = fed = written = 0
    while written < len(reply):
        guess = guesses.after(reply[:written], draft) if written else []
        kept = 0
        while kept < len(guess) and written + kept < len(reply) and guess[kept] == reply[written + kept]:
            kept += 1
        written += min(kept + 1, len(reply) - written)
        steps += 1
        fed += 1 + len(guess)
    return steps, fed


def call_kinds(calls: list[dict], tokenizer) -> list[dict]:
    """Per kind of call (the prompt's last ``### `` heading: Output for the critic's answers, Critique,
    Revision), the replies' lengths against their limit, and the decoding steps and tokens fed as they ran
    against with prompt-lookup drafts (:func:`lookup_steps`). A call takes as many steps as its longest reply."""
    kinds: dict[str, dict] = {}
    for call in calls:
        headings = re.findall(r"^### ([^\n:]+):", tokenizer.decode(call["prompts"][0][-80:]), flags=re.MULTILINE)
        kind = {"Output": "answer"}.get(headings[-1], headings[-1].lower()) if headings else "other"
        k = kinds.setdefault(kind, {"setup": "calls", "kind": kind, "limit": call["limit"], "lengths": [],
                                    "steps": 0, "lookup_steps": 0, "lookup_fed": 0})
        lookups = [lookup_steps(call["prompts"][i // call["n"]], reply) for i, reply in enumerate(call["replies"])]
        k["lengths"] += [len(reply) for reply in call["replies"]]
        k["steps"] += max(map(len, call["replies"]), default=0)
        k["lookup_steps"] += max((steps for steps, _ in lookups), default=0)
        k["lookup_fed"] += sum(fed for _, fed in lookups)
    table = []
    for k in kinds.values():
        lengths = k.pop("lengths")
        table.append({**k, "replies": len(lengths), "median_tokens": statistics.median(lengths) if lengths else 0,
                      "at_limit": sum(n >= k["limit"] for n in lengths) / max(len(lengths), 1), "fed": sum(lengths)})
    return table


def time_stage(critic, rows: list[dict], settings: Revise, provenance: list | None = None) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        stage = ConstitutionStage(Constitution.load(DEFAULT_PATH), settings, Path(folder) / "stage", lambda: critic)
        start = time.perf_counter()
        records = stage.run(rows, progress=False)
        if provenance is not None:
            provenance.extend(records)
        return time.perf_counter() - start, summarize(records, stage.constitution, stage.must_pass)


def decoder_throughput(args: argparse.Namespace) -> list[dict]:
    """The stage with a pretrained critic, transformers' generate against the own decoder: see the module docstring."""
    from cai_lightning.devices import inference_dtype
    from cai_lightning.generation import PromptCache

    rows = load_rows(args.rows)
    critic = args.critic_model or Critic.load(args.critic, device=args.device)
    dtype = inference_dtype(critic.model.device)
    common = dict(
        response_source="model", rounds=1, critique_tokens=args.critique_tokens, revision_tokens=args.revision_tokens,
        device=args.device,
    )
    own_batch = args.own_batch_size or args.batch_size
    print(f"{len(rows)} rows, critic {critic.name} ({dtype}), {torch.get_num_threads()} CPU threads; per row: answer "
          f"{args.revision_tokens} + critique {args.critique_tokens} + {args.candidates} x revision {args.revision_tokens} "
          f"tokens at most")
    print(f"{'':30s} {'s/row':>7s} {'generating':>10s} {'tokens/s':>8s} {'speedup':>8s}  accepted (critic/fixer)  changed  failing")
    decoders = [
        (f"transformers generate (batch {args.batch_size})", "transformers", args.batch_size, 0),
        (f"own decode (batch {own_batch})", "own", own_batch, 0),
    ]
    if args.lookup:
        decoders.append((f"own decode (batch {own_batch}, lookup {args.lookup})", "own", own_batch, args.lookup))
    runs: dict[str, list[dict]] = {label: [] for label, *_ in decoders}
    calls: list[dict] = []
    for _ in range(args.repeats):  # in turn, so drift on a shared machine falls on all alike
        for label, decoder, batch_size, lookup in decoders:
            critic.prompt_cache, critic.decode_stats = PromptCache(), {}
            counting = Counting(critic)
            settings = Revise(candidates=args.candidates, decoder=decoder, batch_size=batch_size, lookup=lookup, **common)
            recorded = calls if decoder == "own" and not lookup else []
            recorded.clear()
            with recording_calls(recorded):
                seconds, summary = time_stage(counting, rows, settings)
            runs[label].append({
                "seconds": seconds, "generation_seconds": counting.seconds, "generated_tokens": counting.tokens,
                "prompt_tokens_reused": critic.prompt_cache.reused, "prompt_tokens_encoded": critic.prompt_cache.encoded,
                "decode": dict(critic.decode_stats), "summary": summary,
            })
    table, baseline = [], None
    for label, decoder, batch_size, lookup in decoders:
        times = [run["seconds"] for run in runs[label]]
        seconds = statistics.median(times)
        run = min(runs[label], key=lambda r: abs(r["seconds"] - seconds))  # the median run (the results are seeded alike)
        summary, rate = run.pop("summary"), len(rows) / seconds
        baseline = baseline or rate
        accepted = summary["accepted"]
        print(
            f"{label:30s} {seconds / len(rows):7.2f} {run['generation_seconds']:9.0f}s "
            f"{run['generated_tokens'] / run['generation_seconds']:8.1f} {rate / baseline:7.2f}x  "
            f"{accepted.get('critic', 0):>10d} / {accepted.get('fixer', 0):<10d} {summary['rows_changed']:8d} "
            f"{summary['rows_failing_must_pass']:8d}  refused {summary['refused']}"
            + (f"  range {min(times) / len(rows):.2f}-{max(times) / len(rows):.2f} s/row" if len(times) > 1 else "")
        )
        table.append({
            "setup": label, "decoder": decoder, "batch_size": batch_size, "lookup": lookup, "rows": len(rows),
            "seconds_per_row": seconds / len(rows),
            "runs_seconds": times, "tokens_per_s": run["generated_tokens"] / run["generation_seconds"],
            "speedup": rate / baseline, **run, "seconds": seconds, **summary,
        })
    kinds = call_kinds(calls, critic.tokenizer)  # the own decoder's calls, in its last run
    print(f"the own decoder's calls: {'':9s} {'replies':>7s} {'median':>6s} {'at limit':>8s} {'steps':>6s} "
          f"{'with lookup':>11s} {'tokens fed':>10s} {'with lookup':>11s}")
    for k in kinds:
        print(f"  {k['kind']:10s} (<= {k['limit']:3d} tokens) {k['replies']:7d} {k['median_tokens']:6.0f} {k['at_limit']:8.0%} "
              f"{k['steps']:6d} {k['lookup_steps']:11d} {k['fed']:10d} {k['lookup_fed']:11d}")
    table += kinds
    if args.greedy_rows:
        greedy = dict(common, do_sample=False, candidates=1, batch_size=args.batch_size)
        written = {}
        for _, decoder, _, _ in decoders[:2]:
            critic.prompt_cache = PromptCache()
            records: list[dict] = []
            time_stage(critic, rows[: args.greedy_rows], Revise(decoder=decoder, **greedy), records)
            written[decoder] = [
                (r["original"], [s["critique"] for s in r["steps"]],
                 [c["text"] for s in r["steps"] for c in s["candidates"] if c["source"] == "critic"])
                for r in records
            ]
        before, after = written["transformers"], written["own"]
        same = {
            part: sum(a[k] == b[k] for a, b in zip(before, after)) / max(len(before), 1)
            for k, part in enumerate(("answers", "critiques", "revisions"))
        }
        print(f"greedy, {len(before)} rows, {dtype}: written the same by both decoders: "
              + ", ".join(f"{part} {share:.2f}" for part, share in same.items()))
        table.append({"setup": "greedy agreement", "rows": len(before), "dtype": str(dtype), **same})
    table += step_costs(critic, rows, args.step_batches, args.step_tokens)
    return table


def step_costs(critic: Critic, rows: list[dict], batches: list[int], tokens: int) -> list[dict]:
    """What one decoding step of ``decode`` costs with ``batch`` rows in it, each of ``batches``: the same
    critique prompts, greedy, every row running ``tokens`` steps (no end token). Where the time grows
    little with the rows, a step is bound by reading the weights, not by the rows' arithmetic."""
    from cai_lightning.constitution.prompts import critique_prompt
    from cai_lightning.generation import decode

    principle = Constitution.load(DEFAULT_PATH).principles[0]
    texts = [critique_prompt(row["instruction"], row.get("input", ""), row["output"], principle, []) for row in rows]
    prompts = critic.encode(texts)
    table = []
    for batch in batches:
        chosen = [prompts[i % len(prompts)] for i in range(batch)]
        stats: dict[str, float] = {}
        decode(critic.model, chosen, max_new_tokens=tokens, eos_token_id=-1, pad_token_id=critic.pad_id, stats=stats)
        table.append({
            "setup": "decoding step", "batch": batch, "steps": stats["steps"], "step_ms": stats["step_s"] / stats["steps"] * 1e3,
            "row_step_ms": stats["step_s"] / stats["row_steps"] * 1e3,
            "encode_ms_per_token": stats["encode_s"] / sum(map(len, chosen)) * 1e3,
        })
        print(f"decoding step, {batch:3d} rows: {table[-1]['step_ms']:7.1f} ms a step, "
              f"{table[-1]['row_step_ms']:6.2f} ms a row; prompts encoded at {table[-1]['encode_ms_per_token']:.2f} ms a token")
    return table


def eval_throughput(args: argparse.Namespace) -> list[dict]:
    """Evaluation's samples/s, one task at a time against batched: see the module docstring."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from cai_lightning.callbacks import ExecutionEval
    from cai_lightning.constitution.prompts import extract_code
    from cai_lightning.data.records import split_of
    from cai_lightning.data.tokenization import load_pretrained_tokenizer
    from cai_lightning.devices import cpu_supports_bf16
    from cai_lightning.evaluation import Problem
    from cai_lightning.model import CodeLM
    from cai_lightning.settings import Generation
    from cai_lightning.prompts import styled_prompt

    rows = [r for r in shipped_rows() if split_of({**r, "input": r.get("input", "")}, 0.1, 0.1, 0) == "test"][: args.tasks]
    if args.eval == "tiny":
        tokenizer = train_bpe_tokenizer((format_prompt(r["instruction"], r.get("input", "")) + r["output"] for r in rows), 2048)
        module, style = CodeLM(n_layer=2, n_head=2, n_embd=128, n_positions=512), "alpaca"
    else:
        tokenizer, module, style = load_pretrained_tokenizer(args.eval), CodeLM(pretrained=args.eval), "chat"
    module.connect(tokenizer)
    module.configure_model()
    module.eval()
    problems = [
        Problem(r["task_id"], styled_prompt(style, tokenizer, r["instruction"], r.get("input", "")), r["entry_point"], r["tests"])
        for r in rows
    ]
    bf16 = args.device == "cpu" and cpu_supports_bf16()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else nullcontext
    trainer = SimpleNamespace(is_global_zero=False, strategy=None, precision_plugin=SimpleNamespace(forward_context=autocast))
    sampling = Generation(num_beams=1, num_return_sequences=args.samples, do_sample=True, temperature=0.8, top_p=0.95,
                          max_new_tokens=args.eval_tokens)
    contenders = (
        ("one task at a time", ExecutionEval(sampling, batch_size=1, extract_code=False)),
        (f"batched ({args.eval_batch} tasks)", ExecutionEval(sampling, batch_size=args.eval_batch, extract_code=True)),
    )
    print(f"evaluation: {len(problems)} test tasks x {args.samples} samples of <= {args.eval_tokens} tokens, "
          f"{args.eval}, {torch.get_num_threads()} CPU threads, {'bf16 autocast' if bf16 else 'fp32'}")
    print(f"{'':30s} {'seconds':>8s} {'samples/s':>9s} {'speedup':>8s}  tokens/sample  range (s)")
    times: dict[str, list[float]] = {label: [] for label, _ in contenders}
    outputs = {}
    for _ in range(args.repeats):
        for label, evaluator in contenders:
            module._decodes = evaluator.batch_size > 1  # the path before: transformers' generate
            start = time.perf_counter()
            outputs[label] = evaluator._generate(trainer, module, problems, "tasks")
            times[label].append(time.perf_counter() - start)
    baseline, table = None, []
    for label, _ in contenders:
        seconds = statistics.median(times[label])
        completions = [c for outs in outputs[label] for c in outs]
        rate = len(completions) / seconds
        baseline = baseline or rate
        tokens = statistics.mean(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions)
        print(f"{label:30s} {seconds:8.1f} {rate:9.2f} {rate / baseline:7.2f}x  {tokens:13.0f}  "
              f"{min(times[label]):.1f}-{max(times[label]):.1f}")
        table.append({"setup": label, "seconds": seconds, "samples_per_s": rate, "speedup": rate / baseline,
                      "tokens_per_sample": tokens})
    if args.greedy_tasks:
        # sampled, the two draw differently (one generator a task against one a sample); greedy, the scored
        # code must be the same
        greedy = dataclasses.replace(sampling, do_sample=False, num_return_sequences=1)
        written = {}
        for label, evaluator in contenders:
            module._decodes = evaluator.batch_size > 1
            evaluator = ExecutionEval(greedy, batch_size=evaluator.batch_size, extract_code=evaluator.extract_code)
            written[label] = [extract_code(c) for outs in evaluator._generate(trainer, module, problems[: args.greedy_tasks], "tasks") for c in outs]
        before, after = (written[label] for label, _ in contenders)
        same = sum(a == b for a, b in zip(before, after)) / max(len(before), 1)
        print(f"greedy, {len(before)} tasks: scored code the same in both: {same:.2f}")
        table.append({"setup": "greedy agreement", "tasks": len(before), "same_code": same})
    return table


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="rows of the shipped task set (64; --critic: 32)")
    parser.add_argument("--model", choices=("tiny", "gpt2"), default="tiny", help=f"tiny: {RANDOM_CRITIC}; gpt2: 124M")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--own-batch-size", type=int, default=None,
                        help="--critic: rows per call of the own decoder (default: --batch-size)")
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--critique-tokens", type=int, default=None, help="32; --critic: 96")
    parser.add_argument("--revision-tokens", type=int, default=None, help="192; --critic: 256")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row, in turn; the median is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the critic runs")
    parser.add_argument("--eval", default=None, help="time evaluation's generation with this model (tiny or a name)")
    parser.add_argument("--critic", default=None, help="time the stage's decoders with this pretrained critic")
    parser.add_argument("--greedy-rows", type=int, default=8, help="--critic: rows decoded greedily by both decoders")
    parser.add_argument("--lookup", type=int, default=4,
                        help="--critic: also the own decoder with this many prompt-lookup guesses a step for revisions (0: not)")
    parser.add_argument("--step-batches", type=int, nargs="*", default=[8, 16, 32, 64],
                        help="--critic: rows in the batch for which a decoding step is timed (none: skip)")
    parser.add_argument("--step-tokens", type=int, default=48, help="--critic: steps timed at each of --step-batches")
    parser.add_argument("--tasks", type=int, default=16, help="--eval: tasks of the shipped test split")
    parser.add_argument("--samples", type=int, default=5, help="--eval: samples per task")
    parser.add_argument("--eval-tokens", type=int, default=256, help="--eval: new tokens per sample at most")
    parser.add_argument("--eval-batch", type=int, default=8, help="--eval: tasks per generate call, batched")
    parser.add_argument("--greedy-tasks", type=int, default=8, help="--eval: tasks decoded greedily by both paths")
    parser.add_argument("--out", default=None, help="the result file (default: bench/results/constitution_throughput-MODE.json, MODE stage, decoders or eval)")
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 rows, 1 candidate, a few tokens (CI)")
    args = parser.parse_args(argv)
    args.rows = args.rows or (32 if args.critic else 64)
    args.critique_tokens = args.critique_tokens or (96 if args.critic else 32)
    args.revision_tokens = args.revision_tokens or (256 if args.critic else 192)
    if args.smoke:
        args.rows, args.model, args.batch_size, args.candidates, args.repeats = 2, "tiny", 2, 1, 1
        args.critique_tokens, args.revision_tokens = 4, 8
        args.tasks, args.samples, args.eval_tokens, args.eval_batch = 3, 2, 6, 2
        args.greedy_rows = args.greedy_tasks = 2
        args.step_batches, args.step_tokens = [1, 2], 3
        if args.eval:
            args.eval = "tiny"
    args.critic_model = None
    if args.critic is not None and args.smoke:  # the offline critic stands in for the pretrained one
        args.critic_model = build_critic("tiny", load_rows(args.rows), args.device)
    if args.eval or args.critic:
        table = eval_throughput(args) if args.eval else decoder_throughput(args)
        mode = "eval" if args.eval else "decoders"
        record(NAME, table, argv, args.smoke, Path(args.out) if args.out else None, f"{NAME}-{mode}")
        return table

    rows = load_rows(args.rows)
    critic = build_critic(args.model, rows, args.device)
    common = dict(
        response_source="model", rounds=1, candidates=args.candidates, critique_tokens=args.critique_tokens,
        revision_tokens=args.revision_tokens, device=args.device,
    )
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"{len(rows)} rows, critic {critic.name}, {where}; "
          f"per row: answer {args.revision_tokens} + critique {args.critique_tokens} + "
          f"{args.candidates} x revision {args.revision_tokens} tokens, fixer, all checks")
    print(f"{'':30s} {'seconds':>8s} {'rows/s':>8s} {'speedup':>8s}  reviewed  changed  range (s)")
    contenders = (
        ("seed's way (one at a time)", OneAtATime(critic), Revise(batch_size=1, workers=1, **common)),
        (f"batched (batch {args.batch_size})", critic, Revise(batch_size=args.batch_size, workers=None, **common)),
    )
    times: dict[str, list[float]] = {label: [] for label, _, _ in contenders}
    summaries = {}
    for _ in range(args.repeats):  # in turn, so drift on a shared machine falls on both rows alike
        for label, model, settings in contenders:
            seconds, summaries[label] = time_stage(model, rows, settings)
            times[label].append(seconds)
    baseline, table = None, []
    for label, _, _ in contenders:
        seconds = statistics.median(times[label])
        rate = len(rows) / seconds
        baseline = baseline or rate
        summary = summaries[label]
        print(
            f"{label:30s} {seconds:8.1f} {rate:8.2f} {rate / baseline:7.2f}x  {summary['rows_reviewed']:8d} "
            f"{summary['rows_changed']:8d}  {min(times[label]):.1f}-{max(times[label]):.1f}"
        )
        table.append({"setup": label, "seconds": seconds, "rows_per_s": rate, "speedup": rate / baseline, **summary})
    record(NAME, table, argv, args.smoke, Path(args.out) if args.out else None, f"{NAME}-stage")
    return table


if __name__ == "__main__":
    main()
