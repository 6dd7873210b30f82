"""The docs' results tables and plots, made from the benches' result files.

    python bench/report.py            # rewrite every generated table in docs/ and README.md, and the plots in docs/figures/
    python bench/report.py --check    # exit 1 where a table is not what its result file says (CI)

A generated table sits in a page between two comments that name its result file under
``bench/results/``:

    <!-- results: train_throughput.json -->
    (rewritten by this script: a line naming the command, date, checkout and machine, then the table)
    <!-- end results -->

(``<!-- results: constitution_gate.json brief -->`` asks for a file's shorter table, where there is one),
so a figure in such a table is the file's, and ``--check`` (run by the tests) fails when someone edits one
by hand or a bench's new result file is not carried into the docs. The plots (PNG) are drawn from the same
files; they need matplotlib (``pip install -e ".[bench]"``) and are not checked byte for byte, since a
matplotlib release may draw the same figures differently.

Why one long module: one renderer per bench, side by side, so that ``--check`` sees every table a page
quotes and a new result file without a renderer is refused in one place.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
LABELS = ROOT / "bench" / "data" / "scraped_labels.jsonl"  # constitution_gate's planted defects, by row

BLOCK = re.compile(r"(<!-- results: (?P<file>[\w.-]+)(?: (?P<variant>\w+))? -->\n)(?P<body>.*?)(<!-- end results -->)", re.DOTALL)


# ---------------------------------------------------------------- reading a result file


def load(path: Path) -> dict:
    """A result file as :func:`harness.record` writes it (bench, command, date, commit, machine, smoke, results)."""
    entry = json.loads(path.read_text())
    if not isinstance(entry, dict) or "results" not in entry or "machine" not in entry:
        raise SystemExit(f"{path}: not a result file written by bench/harness.py's record (no command or machine)")
    if entry.get("smoke"):
        raise SystemExit(f"{path}: a smoke run's figures, which no page should quote")
    return entry


def describe_machine(machine: dict) -> str:
    """'2 cores of Intel(R) Xeon(R) Processor (AVX2, AVX-512, AVX512-BF16, AMX-BF16), native bf16, 2 threads,
    torch 2.13.0+cpu' (the GPU instead, where there was one)."""
    if machine.get("gpu"):
        where = machine["gpu"]
    else:
        features = f" ({', '.join(machine['cpu_features'])})" if machine.get("cpu_features") else ""
        where = (f"{machine['cores']} cores of {machine['cpu']}{features}, "
                 + ("native bf16" if machine["cpu_bf16"] else "no native bf16"))
    return f"{where}, {machine['threads']} threads, torch {machine['torch']}"


def short_machine(entry: dict) -> str:
    """'2 cores of Intel(R) Xeon(R) Processor, AMX-BF16, 2026-12-07': a plot title's line."""
    machine = entry["machine"]
    if machine.get("gpu"):
        return f"{machine['gpu']}, {entry['date'][:10]}"
    best = [f for f in machine.get("cpu_features", []) if "BF16" in f][-1:] or ["no native bf16"]
    return f"{machine['cores']} cores of {machine['cpu']}, {best[0]}, {entry['date'][:10]}"


def caption(entry: dict) -> str:
    return (f"`{entry['command']}` — {entry['date']}, commit {entry['commit']}, "
            f"{describe_machine(entry['machine'])}")


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def span(low: float, high: float, digits: int = 2) -> str:
    return f"{low:.{digits}f}–{high:.{digits}f}"


# ---------------------------------------------------------------- one renderer per bench


def train_throughput(results: list[dict]) -> str:
    names = {
        "hf-own-bf16": "Trainer, its own sampler, bf16", "hf-ours-bf16": "Trainer, given our sampler, bf16",
        "ours-bf16-mixed": "**ours (`fit`, bf16-mixed)**", "ours-bf16-mixed-compile": "ours, compiled, bf16-mixed",
        "hf-own-fp32": "Trainer, its own sampler, fp32", "hf-ours-fp32": "Trainer, given our sampler, fp32",
        "ours-32-true": "ours (`fit`, 32-true)",
    }
    rows = []
    for row in sorted(results, key=lambda r: (r["dtype"] != "bf16", list(names).index(r["row"]))):
        ratio = "-" if row["vs_hf_own"] is None else f"{row['vs_hf_own']:.2f}× ({span(*row['vs_hf_own_range'])})"
        rows.append([names[row["row"]], f"{row['target_tokens_per_s']:.0f} ({span(*row['range'], 0)})",
                     f"{row['padding']:.1%}", ratio, f"{row['peak_share']:.1%}"])
    return table(["row", "target tok/s (median, range)", "padding", "× Trainer, own sampler, same dtype (median, range)",
                  "share of matmul peak"], rows)


def memory_growth(results: dict[str, list[dict]]) -> str:
    epochs = len(results["new"][0]["epochs"])
    rows = []
    for epoch in range(epochs):
        cells = [str(epoch)]
        for arm in ("new", "replay"):
            figures = [run["epochs"][epoch] for run in results[arm]]
            cells += [f"{statistics.median(f[key] for f in figures):,.0f}"
                      for key in ("target_tokens_per_s", "resident_mib", "minor_faults")]
        rows.append(cells)
    ratios = [sum(e["seconds"] for e in new["epochs"][1:]) / sum(e["seconds"] for e in replay["epochs"][1:])
              for new, replay in zip(results["new"], results["replay"], strict=True)]
    live = sorted({round(e["live_tensor_mib"]) for arm in results.values() for run in arm for e in run["epochs"]})
    return (table(["epoch", "new: tok/s", "new: resident MiB", "new: page faults",
                   "replay: tok/s", "replay: resident MiB", "replay: page faults"], rows)
            + f"\n\nMedians of {len(results['new'])} repeats. Live tensors: {span(live[0], live[-1], 0) if live[0] != live[-1] else live[0]} MiB. Epochs 1–{epochs - 1}: "
            f"replay ran **{statistics.median(ratios):.2f}×** the speed of new (paired by repeat, {span(min(ratios), max(ratios))}).")


def cpu_attention(results: list[dict]) -> str:
    rows = [[str(r["length"]), f"{r['sdpa-bf16']:.1f}", f"{r['sdpa-fp32']:.1f}", f"**{r['matmuls']:.1f}**",
             f"{r['sdpa-bf16'] / r['matmuls']:.2f}×", f"{r['sdpa-fp32'] / r['matmuls']:.2f}×",
             f"{r['max_abs_difference']:.4f}"] for r in results]
    return table(["length", "fused, bf16 (ms)", "fused, fp32 casts (ms)", "matmuls (ms)", "fused bf16 / matmuls",
                  "fused fp32 / matmuls", "max abs Δ"], rows, "r" * 7)


def optimizer_step(results: list[dict]) -> str:
    rows = []
    for r in results:
        ratio = f"{r['vs_foreach']:.2f}×" + (f" ({span(*r['vs_foreach_range'])})" if r.get("vs_foreach_range") else "")
        rows.append([r["row"], f"{r['ms_per_step']:.2f} ({span(r['min_ms'], r['max_ms'])})", ratio,
                     f"{r['max_abs_difference']:.1e}"])
    return table(["kernel", "ms a step (median, range)", "× foreach", "max abs Δw against foreach"], rows)


def sandbox_throughput(results: list[dict]) -> str:
    previous = {r["workers"]: r["overhead_ms"] for r in results if r["setup"] == "previous sandbox"}
    rows = []
    for r in results:
        overhead = "" if r["overhead_ms"] is None else f"{r['overhead_ms']:+.1f}"
        ratio = (f"{r['overhead_ms'] / previous[r['workers']]:.2f}×"
                 if r["setup"] == "judge sandbox" and previous.get(r["workers"]) else "")
        rows.append([r["setup"], str(r["workers"]), str(r["passed"]), f"{r['seconds']:.2f}", overhead, ratio])
    return table(["setup", "workers", "passed", "seconds (median)", "overhead a program (ms)", "overhead / previous"], rows)


def dpo_step(results: list[dict]) -> str:
    live = next(r for r in results if r["mode"] == "live")
    rows = [[r["mode"], r["precision"], f"{r['pairs_per_s']:.2f}", f"{r['pairs_per_s'] / live['pairs_per_s']:.2f}×",
             f"{r['peak_mib']:,.0f}", f"{r['reference_s']:.1f}" if r["mode"] == "cached" else "-"] for r in results]
    return table(["reference", "precision", "pairs/s", "× live", "peak MiB", "reference pass (s, once)"], rows)


def constitution_stage(results: list[dict]) -> str:
    rows = [[r["setup"], f"{r['seconds']:.1f}", f"{r['rows_per_s']:.2f}", f"**{r['speedup']:.2f}×**",
             str(r["rows_reviewed"]), str(r["rows_changed"])] for r in results]
    return table(["stage", "seconds", "rows/s", "speedup", "rows reviewed", "rows changed"], rows)


def constitution_decoders(results: list[dict]) -> str:
    rows = []
    for r in results:
        if r.get("setup") in ("greedy agreement", "decoding step", "calls"):
            continue
        accepted = r["accepted"]
        rows.append([r["setup"], f"{r['seconds_per_row']:.2f}", f"{r['generation_seconds']:.0f}",
                     f"{r['tokens_per_s']:.1f}", f"**{r['speedup']:.2f}×**",
                     f"{accepted.get('critic', 0)} / {accepted.get('fixer', 0)}", str(r["rows_changed"])])
    text = table(["decoder", "s/row", "generating (s)", "tokens/s", "speedup", "accepted critic / fixer", "rows changed"], rows)
    notes = []
    greedy = next((r for r in results if r.get("setup") == "greedy agreement"), None)
    if greedy:
        same = " / ".join(f"{greedy[key]:.2f}" for key in ("answers", "critiques", "revisions"))
        notes.append(f"Both decoders greedy on {greedy['rows']} rows ({greedy['dtype'].removeprefix('torch.')}): "
                     f"the share of answers / critiques / revisions that are the same, {same}.")
    own = next((r for r in results if r.get("decode")), None)
    if own:
        d = own["decode"]
        notes.append(f"Where the own decoder's {own['generation_seconds']:.0f} s went: {d['encode_s']:.0f} s encoding prompts "
                     f"({own['prompt_tokens_encoded']:,} tokens encoded, {own['prompt_tokens_reused']:,} reused), "
                     f"{d['step_s']:.0f} s in {d['steps']:.0f} decoding steps ({d['step_s'] / d['steps'] * 1e3:.0f} ms a step, "
                     f"{d['row_steps'] / d['steps']:.1f} rows in the batch on average).")
    if notes:
        text += "\n\n" + " ".join(notes)
    kinds = [r for r in results if r.get("setup") == "calls"]
    if kinds:
        text += "\n\n" + table(
            ["the own decoder's calls", "replies", "median tokens", "at the limit", "steps", "steps with lookup",
             "tokens fed", "tokens fed with lookup"],
            [[f"{k['kind']} (≤ {k['limit']} tokens)", str(k["replies"]), f"{k['median_tokens']:.0f}", f"{k['at_limit']:.0%}",
              str(k["steps"]), f"{k['lookup_steps']} ({k['lookup_steps'] / max(k['steps'], 1):.2f}×)", f"{k['fed']:,}",
              f"{k['lookup_fed']:,} ({k['lookup_fed'] / max(k['fed'], 1):.2f}×)"] for k in kinds],
            "lrrrrrrr",
        )
    steps = [r for r in results if r.get("setup") == "decoding step"]
    if steps:
        base = steps[0]
        text += "\n\n" + table(
            ["rows in the batch", "ms a step", f"× {base['batch']} rows' step", "ms a row", "prompt encoding, ms a token"],
            [[str(r["batch"]), f"{r['step_ms']:.1f}", f"{r['step_ms'] / base['step_ms']:.2f}×", f"{r['row_step_ms']:.2f}",
              f"{r['encode_ms_per_token']:.2f}"] for r in steps], "r" * 5)
    return text


def constitution_eval(results: list[dict]) -> str:
    rows = [[r["setup"], f"{r['seconds']:.0f}", f"{r['samples_per_s']:.2f}", f"**{r['speedup']:.2f}×**",
             f"{r['tokens_per_sample']:.0f}"] for r in results if "samples_per_s" in r]
    text = table(["evaluation", "seconds", "samples/s", "speedup", "tokens a sample"], rows)
    greedy = next((r for r in results if r.get("setup") == "greedy agreement"), None)
    if greedy:
        text += f"\n\nGreedy on {greedy['tasks']} tasks: the scored code is the same for {greedy['same_code']:.0%} of them."
    return text


GATE_CRITICS = {"random": "random (the floor)", "smollm2-135m-instruct": "SmolLM2-135M-Instruct",
                "qwen2.5-coder-0.5b-instruct": "Qwen2.5-Coder-0.5B-Instruct"}


def _critic(r: dict) -> str:
    return GATE_CRITICS.get(r["critic"], r["critic"])


def _by_repairs(results: list[dict]) -> list[dict]:
    """The gate's rows, the critic that repaired most first: the order of every gate table."""
    return sorted(results, key=lambda r: -r["repaired"])


def constitution_gate(results: list[dict]) -> str:
    critics = _by_repairs(results)
    rows = []
    for r in critics:
        a, p, t = r["accepted"], r["proposed"], r["audit"]
        agreed = r.get("agreed_tests", {})
        rows.append([_critic(r), f"{p.get('critic', 0)} / {a.get('critic', 0)}", str(a.get("fixer", 0)),
                     str(t.get("better", 0)), str(t.get("unchanged", 0)), f"**{t.get('harmful', 0)}**", str(t.get("unknown", 0)),
                     f"**{r['repaired']} / {r['planted']}**", f"{agreed.get('rows', 0)} / {agreed.get('missed', 0)}",
                     f"{r['seconds_per_row']:.1f}"])
    text = table(["critic", "critic revisions proposed / kept", "fixer kept", "better", "unchanged", "harmful", "unknown",
                  "planted defects repaired", "rows with agreed tests / missed by the original", "s/row"], rows)
    refused = "; ".join(f"{_critic(r)}: " + (", ".join(f"{k} {v}" for k, v in r["refused"].items()) or "none")
                        for r in critics)
    text += f"\n\nRefused by the gate, by reason: {refused}."
    return text + "\n\n" + repairs_by_defect(critics)


def repairs_by_defect(critics: list[dict]) -> str:
    """Planted defects repaired (a kept revision the audit calls better), by the kind of defect, each critic."""
    labels = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    rows = critics[0]["rows"]  # the first N rows of the labelled set (--rows)
    planted: dict[str, int] = {}
    for label in labels[:rows]:
        if label["defect"]:
            planted[label["defect"]] = planted.get(label["defect"], 0) + 1
    repaired: dict[str, dict[str, int]] = {r["critic"]: {} for r in critics}
    for r in critics:
        better = {(e["row"], e["defect"]) for e in r["audit_entries"] if e["verdict"] == "better" and e["defect"]}
        for _, defect in better:
            repaired[r["critic"]][defect] = repaired[r["critic"]].get(defect, 0) + 1
    body = [[defect, str(count), *(str(repaired[r["critic"]].get(defect, 0)) for r in critics)]
            for defect, count in sorted(planted.items(), key=lambda kv: (-kv[1], kv[0]))]
    return table(["planted defect", "rows", *(f"repaired: {_critic(r)}" for r in critics)], body)


def constitution_gate_brief(results: list[dict]) -> str:
    """The gate's table in four columns, for the README."""
    rows = [[_critic(r), f"{r['proposed'].get('critic', 0)} / {r['accepted'].get('critic', 0)}",
             f"**{r['audit'].get('harmful', 0)}**", f"**{r['repaired']} / {r['planted']}**"]
            for r in _by_repairs(results)]
    return table(["critic", "critic revisions proposed / kept", "harmful", "planted defects repaired"], rows)


def _ci(value: list[float], signed: bool = False) -> str:
    """'0.054 [0.014, 0.100]' (a mean and its interval), with signs for a difference."""
    f = "{:+.3f}" if signed else "{:.3f}"
    mean, low, high = value
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]".replace("-", "−")


EFFECT_BASELINES = ("sft-corrupted", "sft-constitution")  # the main table's comparisons
SUITE_NAMES = {"tasks": "held-out shipped tasks", "humaneval": "HumanEval"}
EFFECT_METRICS = {"pass@1": "pass@1", "pass@5": "pass@5", "syntax_valid": "syntax-valid", "unsafe": "unsafe samples"}


def corrupted(results: dict) -> str:
    """'smollm2.yaml: 103 of 344 training outputs corrupted (syntax_error 35, ...)': what an effect run started from."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in results["kinds"].items())
    return f"{results['config']}: {results['corrupted']} of {results['train_rows']} training outputs corrupted ({kinds})"


def constitution_effect(results: dict) -> str:
    """The effect experiment: per suite, each arm's scores and its paired pass@1 differences (pooled over the
    training seeds, and seed by seed); what each constitution stage did with the corrupted rows; the runs."""
    seeds = sorted({s for suite in results["suites"] for arm in suite["arms"] for s in arm["seeds"] if s is not None})
    lines = [f"{corrupted(results)}; "
             + (f"training seeds {', '.join(map(str, seeds))}, an arm's score on a task is its mean over them."
                if seeds else "one training run an arm.")]
    for suite in results["suites"]:
        metrics = list(suite["arms"][0]["metrics"])
        baselines = [b for b in EFFECT_BASELINES if any(b in a["vs"] for a in suite["arms"])]
        headers = ["arm", *(EFFECT_METRICS.get(m, m) for m in metrics), *(f"pass@1 − {b}" for b in baselines)]
        if seeds:
            headers.append("pass@1 by seed")
        rows = []
        for arm in suite["arms"]:
            row = [arm["arm"], *(_ci(arm["metrics"][m]) for m in metrics)]
            for b in baselines:
                cell = _ci(arm["vs"][b], signed=True) if b in arm["vs"] else ""
                by_seed = arm["vs_by_seed"].get(b, [])
                if seeds and len(by_seed) > 1:
                    cell += " (by seed: " + ", ".join(f"{d:+.3f}" for d in by_seed).replace("-", "−") + ")"
                row.append(cell)
            if seeds:
                row.append(", ".join(f"{v:.3f}" for v in arm["pass@1_by_seed"]) if arm["seeds"] != [None] else "")
            rows.append(row)
        name = SUITE_NAMES.get(suite["suite"], suite["suite"])
        lines += ["", f"{name} ({suite['tasks']} tasks; mean [95% bootstrap interval over tasks], differences paired over tasks):",
                  "", table(headers, rows, "l" * len(headers))]
    for arm, stage in results["stages"].items():
        lines += ["", stage_tables(arm, stage)]
    runs = results["runs"]
    dates = sorted(r["date"] for r in runs.values() if r.get("date"))
    commits = sorted({r["commit"] for r in runs.values() if r.get("commit")})
    timing = "; ".join(f"{name}: " + (f"fit {r['fit_seconds']:.0f} s, " if r.get("fit_seconds") is not None else "")
                       + f"test {r['test_seconds']:.0f} s" for name, r in runs.items())
    when = f"Runs from {dates[0]} to {dates[-1]}, commit {', '.join(commits)}. " if dates else ""
    lines += ["", f"{when}Time: {timing}."]
    return "\n".join(lines)


def stage_tables(arm: str, stage: dict) -> str:
    """What one constitution stage of the effect experiment did: its summary in a line, then each corrupted
    training row's outcome by kind of corruption."""
    summary = stage["summary"]
    rounds = ", ".join(f"round {r['round']}: {r['failing']} → {r['failing'] - r['repaired']}" for r in summary.get("repairs", []))
    by_source = ", ".join(f"{source} {summary['proposed'].get(source, 0)} / {summary['accepted'].get(source, 0)}"
                          for source in sorted(summary.get("proposed", {})))
    refused = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.get("refused", {}).items(), key=lambda kv: -kv[1]))
    seconds = f" in {stage['seconds']:.0f} s" if stage.get("seconds") is not None else ""
    lines = [f"The stage of {arm}{seconds}: {summary['rows']} training rows, {summary['rows_reviewed']} reviewed, "
             f"{summary['rows_changed']} changed; revisions proposed / accepted: {by_source or 'none'}; "
             f"refused: {refused or 'none'}; rows failing a must-pass check ({', '.join(summary['must_pass'])}), "
             f"per round: {rounds or 'none'}; dropped {summary.get('dropped', 0)}; "
             f"preference pairs {summary.get('preference_pairs', 0)}."]
    outcomes = sorted({k for counts in stage["by_kind"].values() for k in counts}, key=lambda k: (not k.startswith("repaired"), k))
    body = [[kind, str(sum(counts.values())), *(str(counts.get(k, 0)) for k in outcomes)]
            for kind, counts in sorted(stage["by_kind"].items(), key=lambda kv: -sum(kv[1].values()))]
    lines += ["", "Each corrupted training row, by kind of corruption:", "", table(["corruption", "rows", *outcomes], body)]
    return "\n".join(lines)


def constitution_effect_stage(results: dict) -> str:
    """``constitution_effect.py --stage-only``: what each constitution stage did with the corrupted rows."""
    return "\n\n".join([corrupted(results) + ".", *(stage_tables(arm, stage) for arm, stage in results["stages"].items())])


def constitution_effect_tuning(results: dict) -> str:
    """The effect experiment's fine-tuned arms against the base model: what fine-tuning did, suite by suite."""
    rows = []
    for suite in results["suites"]:
        arms = {a["arm"]: a for a in suite["arms"]}
        if "base" not in arms:
            continue
        base = arms["base"]["metrics"]
        for arm in (a for a in suite["arms"] if "base" in a["vs"]):
            m = arm["metrics"]
            rows.append([f"{SUITE_NAMES.get(suite['suite'], suite['suite'])} ({suite['tasks']})", arm["arm"], f"{base['pass@1'][0]:.3f}", f"{m['pass@1'][0]:.3f}",
                         f"**{_ci(arm['vs']['base'], signed=True)}**",
                         f"{base['syntax_valid'][0]:.3f} → {m['syntax_valid'][0]:.3f}", f"{base['unsafe'][0]:.3f} → {m['unsafe'][0]:.3f}"])
    return table(["suite (tasks)", "fine-tuned arm", "base pass@1", "fine-tuned pass@1", "difference [95% paired interval]",
                  "syntax-valid, base → fine-tuned", "unsafe, base → fine-tuned"], rows, "llrrlll")


RENDERERS: dict[str, Callable] = {
    "train_throughput": train_throughput, "memory_growth": memory_growth, "cpu_attention": cpu_attention,
    "optimizer_step": optimizer_step, "sandbox_throughput": sandbox_throughput, "dpo_step": dpo_step,
    "constitution_throughput-stage": constitution_stage, "constitution_throughput-decoders": constitution_decoders,
    "constitution_throughput-eval": constitution_eval, "constitution_gate": constitution_gate,
    "constitution_gate brief": constitution_gate_brief, "constitution_effect": constitution_effect,
    "constitution_effect tuning": constitution_effect_tuning, "constitution_effect-stage": constitution_effect_stage,
}


def renderer(entry: dict, path: Path, variant: str | None = None) -> Callable:
    """The renderer for a result file: by the bench (for constitution_throughput, by its mode), and the
    ``variant`` a page asks for (``<!-- results: FILE VARIANT -->``)."""
    name = entry["bench"]
    if name == "constitution_throughput":  # three modes, one command
        words = entry["command"].split()
        name += "-eval" if "--eval" in words else "-decoders" if "--critic" in words else "-stage"
    if name == "constitution_effect" and "--stage-only" in entry["command"].split():
        name += "-stage"
    name += f" {variant}" if variant else ""
    if name not in RENDERERS:
        raise SystemExit(f"{path}: no table {name!r} for bench {entry['bench']!r} in bench/report.py")
    return RENDERERS[name]


def render(path: Path, variant: str | None = None) -> str:
    entry = load(path)
    return f"{caption(entry)}:\n\n{renderer(entry, path, variant)(entry['results'])}\n"


# ---------------------------------------------------------------- the docs and the plots


def rewrite(text: str, results: Path) -> str:
    """``text`` with every generated block rendered again from its file under ``results``."""
    def block(match: re.Match) -> str:
        path = results / match["file"]
        if not path.is_file():
            raise SystemExit(f"a docs page quotes {match['file']}, which is not in {results}")
        return f"{match[1]}{render(path, match['variant'])}{match[5]}"

    return BLOCK.sub(block, text)


def plot_throughput(results: Path, figures: Path) -> list[Path]:
    """Bar charts, where a reader would rather look than read: training throughput (median and range per row)
    and the stage's decoders (seconds a row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    path = results / "train_throughput.json"
    if path.is_file():
        entry = load(path)
        rows = sorted(entry["results"], key=lambda r: (r["dtype"], r["row"]))
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
        medians = [r["target_tokens_per_s"] for r in rows]
        errors = [[m - r["range"][0] for m, r in zip(medians, rows)], [r["range"][1] - m for m, r in zip(medians, rows)]]
        colors = ["tab:orange" if r["row"].startswith("ours") else "tab:gray" for r in rows]
        ax.barh([r["row"] for r in rows], medians, xerr=errors, color=colors, capsize=3)
        ax.set_xlabel("target tokens/s (median; bars: range over repeats)")
        ax.set_title(f"Training throughput, ours (orange) against transformers.Trainer\n{short_machine(entry)}", fontsize=9)
        fig.tight_layout()
        written.append(save(fig, figures / "train_throughput.png"))
    stage = sorted(p for p in results.glob("decoders_*.json"))
    if stage:
        entries = [load(p) for p in stage]
        fig, axes = plt.subplots(1, len(entries), figsize=(4 * len(entries), 3.1), squeeze=False)
        for ax, p, entry in zip(axes[0], stage, entries):
            rows = [r for r in entry["results"] if "seconds_per_row" in r]
            colors = ["tab:gray" if r["decoder"] == "transformers" else "tab:green" if r.get("lookup") else "tab:orange" for r in rows]
            ax.bar([r["setup"].replace(" (", "\n(") for r in rows], [r["seconds_per_row"] for r in rows], color=colors)
            for i, r in enumerate(rows):
                ax.annotate(f"{r['seconds_per_row']:.1f} s\n{r['speedup']:.2f}×", (i, r["seconds_per_row"]),
                            ha="center", va="bottom", fontsize=8)
            words = entry["command"].split()
            critic = words[words.index("--critic") + 1] if "--critic" in words else p.stem
            ax.set_title(f"critic {critic}, {rows[0]['rows']} rows\n{short_machine(entry)}", fontsize=8)
            ax.set_ylabel("seconds a row (lower is better)")
            ax.margins(y=0.25)
            ax.tick_params(axis="x", labelsize=7)
        fig.suptitle("The constitution stage's decoders, by critic and machine", fontsize=9)
        fig.tight_layout()
        written.append(save(fig, figures / "constitution_decoders.png"))
    return written


def plot_effect(results: Path, figures: Path) -> list[Path]:
    """The effect experiment with its intervals: per suite, each arm's pass@1 (95% interval over tasks; crosses:
    each training seed's), each fine-tuned arm's paired difference from sft-corrupted, and each arm's share
    of unsafe samples."""
    path = results / "constitution_effect.json"
    if not path.is_file():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = load(path)
    suites = entry["results"]["suites"]
    fig, axes = plt.subplots(3, len(suites), figsize=(4.6 * len(suites), 7.8), squeeze=False)
    for column, suite in enumerate(suites):
        arms = suite["arms"][::-1]  # the first arm on top
        name = SUITE_NAMES.get(suite["suite"], suite["suite"])
        compared = [a for a in arms if "sft-corrupted" in a["vs"]]
        panels = [  # (axes, arms, [mean, low, high] of each, each seed's values, title, colour)
            (axes[0][column], arms, [a["metrics"]["pass@1"] for a in arms], [a["pass@1_by_seed"] for a in arms],
             f"{name} ({suite['tasks']}): pass@1", "tab:blue"),
            (axes[1][column], compared, [a["vs"]["sft-corrupted"] for a in compared],
             [a["vs_by_seed"].get("sft-corrupted", []) for a in compared], "pass@1 − sft-corrupted, paired over tasks", "tab:orange"),
            (axes[2][column], arms, [a["metrics"]["unsafe"] for a in arms], [[] for _ in arms],
             "share of samples with a safety finding", "tab:red"),
        ]
        for ax, shown, values, seeds, title, colour in panels:
            ax.errorbar([v[0] for v in values], [a["arm"] for a in shown], fmt="o", color=colour, capsize=3,
                        xerr=[[v[0] - v[1] for v in values], [v[2] - v[0] for v in values]])
            for y, by_seed in enumerate(seeds):
                if len(by_seed) > 1:
                    ax.plot(by_seed, [y] * len(by_seed), "x", color="tab:gray", markersize=5)
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(axis="x", alpha=0.3)
        axes[1][column].axvline(0, color="black", linewidth=0.8)
        axes[0][column].set_xlim(left=0)
        axes[2][column].set_xlim(left=-0.005)
    fig.suptitle("Does the constitution help? 95% bootstrap intervals over tasks; × each training seed\n"
                 f"{entry['results']['config']}, {short_machine(entry)}", fontsize=9)
    fig.tight_layout()
    return [save(fig, figures / "constitution_effect.png")]


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a page's table is stale")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the pages: every *.md under it (and, by default, README.md)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the result files")
    parser.add_argument("--figures", type=Path, default=None, help="where the plots go (default: DOCS/figures)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    stale = []
    pages = sorted(args.docs.rglob("*.md")) + ([ROOT / "README.md"] if args.docs == DOCS else [])
    for page in pages:
        text = page.read_text()
        new = rewrite(text, args.results)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check:
        for page in stale:
            print(f"{page}: a results table differs from its file; run python bench/report.py", file=sys.stderr)
        return 1 if stale else 0
    for page in stale:
        print(f"rewrote {page}")
    if not args.no_plots:
        figures = args.figures or args.docs / "figures"
        for path in [*plot_throughput(args.results, figures), *plot_effect(args.results, figures)]:
            print(f"drew {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
