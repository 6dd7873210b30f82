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
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.critic import RANDOM_CRITIC, Critic
from cai_lightning.constitution.stage import ConstitutionStage, Revise, summarize
from cai_lightning.data.records import builtin_files
from cai_lightning.data.tokenization import train_bpe_tokenizer
from cai_lightning.prompts import format_prompt


def load_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for path in builtin_files() for line in Path(path).read_text().splitlines() if line.strip()]
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


def time_stage(critic: Critic | OneAtATime, rows: list[dict], settings: Revise) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        stage = ConstitutionStage(Constitution.load(DEFAULT_PATH), settings, Path(folder) / "stage", lambda: critic)
        start = time.perf_counter()
        provenance = stage.run(rows, progress=False)
        return time.perf_counter() - start, summarize(provenance, stage.constitution)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows of the shipped task set")
    parser.add_argument("--model", choices=("tiny", "gpt2"), default="tiny", help=f"tiny: {RANDOM_CRITIC}; gpt2: 124M")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--critique-tokens", type=int, default=32)
    parser.add_argument("--revision-tokens", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each row, in turn; the median is reported")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the critic runs")
    parser.add_argument("--smoke", action="store_true", help="seconds: 2 rows, 1 candidate, a few tokens (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.model, args.batch_size, args.candidates, args.repeats = 2, "tiny", 2, 1, 1
        args.critique_tokens, args.revision_tokens = 4, 8

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
    return table


if __name__ == "__main__":
    main()
