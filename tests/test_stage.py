"""The constitution stage: prompts, score and gate, provenance, preference pairs, cache keys, resuming
after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cai_lightning.constitution import DEFAULT_PATH, Constitution, Finding
from cai_lightning.constitution.critic import Critic
from cai_lightning.constitution.prompts import critique_prompt, extract_code, revision_prompt
from cai_lightning.constitution.stage import ConstitutionStage, Revise, score
from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.errors import ConfigError
from tests.conftest import make_rows, save_tiny_gpt2, write_jsonl

CONSTITUTION = Constitution.load(DEFAULT_PATH)
WEIGHTS = CONSTITUTION.weights  # correctness 4, safety 2, style 1, documentation 1
ROW = {"instruction": "Write a function add(a, b) that returns a + b. Use ints.", "input": "", "entry_point": "add",
       "tests": "assert add(1, 2) == 3", "task_id": "t-add"}
CLEAN = 'def add(a, b):\n    """Return a + b."""\n    return a + b\n'
UNDOCUMENTED = "def add(a, b):\n    return a + b\n"
BROKEN = "def add(a, b):\n    return a - b\n"


class ScriptedCritic:
    """Answers every critique with "c" and every revision request with the next scripted candidates."""

    name = "scripted"
    prompts_truncated = 0

    def __init__(self, revisions: list[str]) -> None:
        self.revisions = revisions
        self.prompts: list[str] = []

    def generate(self, prompts, *, max_new_tokens, n=1, **_):
        self.prompts += prompts
        if prompts[0].endswith("### Critique:\n"):
            return [["c"] for _ in prompts]
        return [[f"```python\n{text}```\nand some chatter" for text in self.revisions[:n]] for _ in prompts]


def run_stage(tmp_path, rows, revisions, **settings):
    critic = ScriptedCritic(revisions)
    settings = {"principles": "all", "rounds": 1, "candidates": len(revisions), "fixers": False, "workers": 1, **settings}
    stage = ConstitutionStage(CONSTITUTION, Revise(**settings), tmp_path / "stage", lambda: critic)
    return stage.run(rows, progress=False), critic


def test_prompts_quote_the_findings_and_the_requests():
    findings = [Finding("style", "F401 `os` imported but unused", 1)]
    prompt = critique_prompt("Do x.", "", "import os\n", CONSTITUTION["style"], findings)
    assert "### Input:" not in prompt and "### Response:\nimport os\n\n" in prompt
    assert "### Automatic check (style):\n- line 1: F401 `os` imported but unused" in prompt
    assert prompt.endswith(f"### Critique request:\n{CONSTITUTION['style'].critique}\n\n### Critique:\n")
    revision = revision_prompt("Do x.", "y = 1", "import os\n", CONSTITUTION["clarity"], [], "Too terse.")
    assert "### Input:\ny = 1" in revision and "### Automatic check" not in revision  # clarity has no check
    assert revision.endswith(f"### Critique:\nToo terse.\n\n### Revision request:\n{CONSTITUTION['clarity'].revision}\n\n### Revision:\n")


@pytest.mark.parametrize(
    ("completion", "code"),
    [
        ("def f():\n    return 1\n\n### Critique:\nmore", "def f():\n    return 1\n"),
        ("Sure:\n```python\nx = 1\n```\n### x", "x = 1\n"),
        ("```\ny = 2\n", "y = 2\n"),
        ("   \n", ""),
    ],
)
def test_extract_code(completion, code):
    assert extract_code(completion) == code


def test_score_weighs_checks_and_counts_findings():
    none = {check: [] for check in WEIGHTS}
    assert score(none, WEIGHTS) == 8.0
    two_style = {**none, "style": [Finding("style", "a"), Finding("style", "b")]}
    assert score(two_style, WEIGHTS) == 6.98
    failing = {**none, "correctness": [Finding("correctness", "x")]}
    assert score(failing, WEIGHTS) < score(two_style, WEIGHTS)  # broken but tidy never beats working


def test_gate_accepts_only_a_strictly_better_candidate(tmp_path):
    rows = [{**ROW, "output": UNDOCUMENTED}, {**ROW, "output": UNDOCUMENTED}, {**ROW, "output": CLEAN}]
    # a worse candidate (fails its test), an equal one (same findings), and a better one (documented)
    provenance, critic = run_stage(tmp_path, rows[:1], [BROKEN, "def add(a, b):\n    return b + a\n", CLEAN], rounds=1, principles="sample")
    [record] = provenance
    step = record["steps"][0]
    assert [c["score"] for c in step["candidates"]] == [2.98, 6.99, 8.0]
    assert step["accepted"] == 2 and record["final"] == CLEAN and record["changed"]
    assert record["findings_before"]["documentation"] == ["line 1: function 'add' has no docstring"]
    assert record["findings_after"] == {check: [] for check in WEIGHTS}

    provenance, _ = run_stage(tmp_path / "tie", rows[1:], ["def add(a, b):\n    return b + a\n"], principles="sample")
    assert provenance[0]["steps"][0]["accepted"] is None and provenance[0]["final"] == UNDOCUMENTED  # ties keep

    provenance, critic = run_stage(tmp_path / "clean", rows[2:], [BROKEN])
    assert provenance[0]["steps"] == [] and critic.prompts == []  # passes every check: never sent to the critic


def test_each_principle_in_turn_quotes_its_own_findings(tmp_path):
    response = "import os\n" + BROKEN
    provenance, critic = run_stage(tmp_path, [{**ROW, "output": response}], [response], rounds=1)
    steps = provenance[0]["steps"]
    assert [s["principle"] for s in steps] == [p.name for p in CONSTITUTION.principles]
    critiques = [p for p in critic.prompts if p.endswith("### Critique:\n")]
    assert "unit tests do not pass" in critiques[0] and "F401" in critiques[2]
    assert provenance[0]["final"] == response  # the only candidate ties: nothing was strictly better


def test_model_responses_are_answered_then_revised(tmp_path):
    provenance, critic = run_stage(tmp_path, [{**ROW, "output": CLEAN}], [UNDOCUMENTED], response_source="model", principles="sample")
    record = provenance[0]
    assert critic.prompts[0].endswith("### Output:\n")  # the dataset's own prompt: the critic answers it first
    assert record["response_source"] == "model" and record["original"] == UNDOCUMENTED  # not the dataset's output
    assert record["final"] == UNDOCUMENTED and record["steps"][0]["accepted"] is None  # its revision only ties


def test_code_that_does_not_parse_is_a_recorded_finding_not_a_crash(tmp_path):
    provenance, _ = run_stage(tmp_path, [{**ROW, "output": "def add(a, b:\n  return"}], ["def add(:"], principles="sample")
    before = provenance[0]["findings_before"]
    assert all("does not parse" in before[check][0] for check in WEIGHTS)
    assert provenance[0]["score_before"] == -0.04 and provenance[0]["final"] == "def add(a, b:\n  return"


def test_fixer_alone_documents_and_formats_without_changing_behaviour(tmp_path):
    messy = "import os\ndef add(a,b):\n    return a+b\n"
    provenance, critic = run_stage(tmp_path, [{**ROW, "output": messy}], [], candidates=0, fixers=True, principles="sample")
    record = provenance[0]
    assert critic.prompts == []  # candidates 0: no critic at all
    assert record["findings_before"]["style"] and record["findings_before"]["documentation"]
    assert record["findings_after"] == {check: [] for check in WEIGHTS}
    assert record["final"].startswith('def add(a, b):\n    """Write a function add(a, b) that returns a + b."""\n')


def test_random_critic_generates_batched_and_seeded(tmp_path):
    from cai_lightning.data.tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([r["instruction"] + r["output"] for r in make_rows(20)], 300)
    critic = Critic.random(tokenizer, seed=1, device="cpu")
    prompts = ["short", "a much longer prompt than the first one, to be left-padded"]
    batched = critic.generate(prompts, max_new_tokens=6, n=2, seed=3)
    assert len(batched) == 2 and all(len(texts) == 2 for texts in batched)
    assert batched == critic.generate(prompts, max_new_tokens=6, n=2, seed=3)  # same seed, same text
    alone = critic.generate(prompts[:1], max_new_tokens=6, n=1, do_sample=False)
    assert alone == critic.generate(prompts, max_new_tokens=6, n=1, do_sample=False)[:1]  # left padding is masked


def test_candidates_share_one_prefill_without_changing_what_is_generated():
    from cai_lightning.data.tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([r["instruction"] + r["output"] for r in make_rows(20)], 300)
    critic = Critic.random(tokenizer, seed=2, device="cpu")
    prompts = ["x = 1", "a longer prompt, left-padded in the batch: def add(a, b):"]
    greedy = critic.generate(prompts, max_new_tokens=8, n=2, do_sample=False)
    assert greedy == [[one[0], one[0]] for one in critic.generate(prompts, max_new_tokens=8, n=1, do_sample=False)]
    shared = critic.generate(prompts, max_new_tokens=8, n=3, seed=4)
    assert critic.model.config._attn_implementation == "sdpa"  # decode_attention was for that call only
    critic._shared_prefill = False  # the prompts repeated 3 times, each copy encoded
    assert shared == critic.generate(prompts, max_new_tokens=8, n=3, seed=4)


@pytest.mark.parametrize(("n", "kv_heads"), [(2, 4), (1, 4), (3, 2)])
def test_decode_attention_is_sdpa_over_the_whole_static_cache(n, kv_heads):
    """decode_attention reads less (the cache cut where its filling ends; with n samples, each prompt once)
    and must compute what transformers' SDPA computes over the whole preallocated cache, masked."""
    from types import SimpleNamespace

    from cai_lightning.constitution.critic import _DECODING, _Decoding, decode_attention

    torch.manual_seed(0)
    heads, dim, width, filled, capacity = 4, 8, 7, 5, 20  # prompts of 8 tokens (7 cached before decoding)
    real = torch.tensor([7, 3, 0])  # tokens of each prompt before its last; the third prompt is all padding there
    prompt_mask = torch.arange(width) >= width - real[:, None]  # left padding, (prompts, width)
    keys, values = torch.randn(2, 3, kv_heads, capacity, dim)
    cache = SimpleNamespace(layers=[SimpleNamespace(keys=keys, values=values)])
    decoding = _Decoding.of(cache, prompt_mask, n)
    assert (decoding.prompts is not None) == (n > 1)  # the prompt is shared only where there is something to share
    keys, values = keys.repeat_interleave(n, 0), values.repeat_interleave(n, 0)
    keys[:, :, width:], values[:, :, width:] = torch.randn(2, 3 * n, kv_heads, capacity - width, dim)  # per sample
    mask = torch.zeros(3 * n, 1, 1, capacity, dtype=torch.bool)
    mask[..., :width] = prompt_mask.repeat_interleave(n, 0)[:, None, None]
    mask[..., width : width + filled] = True  # the prompt's last token and 4 generated; the rest not yet written
    query = torch.randn(3 * n, heads, 1, dim)
    groups = heads // kv_heads
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1), attn_mask=mask
    ).transpose(1, 2)
    module = SimpleNamespace(layer_idx=0, training=False, is_causal=True, num_key_value_groups=groups)
    token = _DECODING.set(decoding)
    try:
        out, _ = decode_attention(module, query, keys, values, mask)
    finally:
        _DECODING.reset(token)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_hub_style_critic_with_chat_template(tmp_path):
    folder = save_tiny_gpt2(tmp_path / "critic")
    critic = Critic.load(str(folder), device="cpu")
    assert critic.as_prompt("hi") == "hi"
    critic.tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    assert critic.as_prompt("hi") == "<user>hi</user><bot>"
    assert len(critic.generate(["hi", "there"], max_new_tokens=4, n=1)[1]) == 1


def test_unloadable_critic_names_it(tmp_path):
    with pytest.raises(ConfigError, match="could not load the critic model '/nonexistent/critic'"):
        Critic.load("/nonexistent/critic")


def datamodule(tmp_path, rows_path, cache="cache", **revise):
    settings = {"critique_tokens": 8, "revision_tokens": 24, "batch_size": 4, "workers": 1, **revise}
    return CodeInstructionDataModule(
        source=str(rows_path), vocab_size=300, max_length=128, cache_dir=str(tmp_path / cache),
        constitution="default", revise=Revise(**settings),
    )


def test_datamodule_revises_train_records_with_provenance_and_preference_pairs(tmp_path, capsys):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(24))  # none of them has a docstring
    dm = datamodule(tmp_path, rows_path)
    dm.prepare_data()
    dm.setup("fit")
    out = capsys.readouterr().out
    summary = dm.manifest["constitution"]
    assert "Constitution stage: " in out and "documentation" in out and "preference pairs" in out
    train = dm.splits["train"]
    assert summary["rows"] == len(train) and summary["violations"]["documentation"]["before"] == len(train)
    assert summary["violations"]["documentation"]["after"] == 0  # the fixer documents every entry point
    assert summary["accepted"]["fixer"] == len(train) == summary["preference_pairs"] == len(dm.preferences)
    record = json.loads(train[0]["provenance"])
    assert record["final"] == train[0]["output"] != train[0]["original_output"] == record["original"]
    assert '"""Write a function' in train[0]["output"]
    assert {c["source"] for c in record["steps"][0]["candidates"]} == {"critic", "fixer"}
    assert dm.splits["val"][0]["output"] == dm.splits["val"][0]["original_output"]  # only train is revised
    pair = dm.preferences[0]
    assert pair["chosen"] != pair["rejected"] and pair["prompt"].endswith("### Output:\n")

    again = datamodule(tmp_path, rows_path)
    again.prepare_data()
    assert "Reusing cached tokenized dataset" in capsys.readouterr().out


def test_stage_cache_follows_its_inputs(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(12))

    def stage_folder(dm):
        return dm._resolve()[-1].folder

    base = stage_folder(datamodule(tmp_path, rows_path))
    assert stage_folder(datamodule(tmp_path, rows_path)) == base
    assert stage_folder(datamodule(tmp_path, rows_path, workers=2)) == base  # does not change the result
    for change in ({"seed": 1}, {"rounds": 2}, {"candidates": 1}, {"revision_tokens": 25}, {"critic": str(tmp_path)}):
        assert stage_folder(datamodule(tmp_path, rows_path, **change)) != base, change
    own = tmp_path / "mine.yaml"
    own.write_text(DEFAULT_PATH.read_text().replace("weight: 2", "weight: 3"))
    dm = datamodule(tmp_path, rows_path)
    dm.hparams.constitution = str(own)
    assert stage_folder(dm) != base
    tokenization_only = datamodule(tmp_path, rows_path)
    tokenization_only.hparams.max_length = 96
    assert stage_folder(tokenization_only) == base  # re-tokenizing does not regenerate


def test_bad_constitution_and_critic_fail_before_any_work(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(12))
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles:\n  - {name: x, critique: c}\n")
    dm = datamodule(tmp_path, rows_path)
    dm.hparams.constitution = str(bad)
    with pytest.raises(ConfigError, match=r"bad.yaml: principle 1 \(x\): missing or empty field 'revision'"):
        dm.prepare_data()
    with pytest.raises(ConfigError, match="could not load the critic model"):
        datamodule(tmp_path, rows_path, critic=str(tmp_path / "no-such-model")).prepare_data()
    assert not list((tmp_path / "cache" / "constitution").glob("*/chunk-*"))
    with pytest.raises(ConfigError, match="data.revise.splits: unknown split"):
        Revise(splits=("train", "dev"))
    with pytest.raises(ConfigError, match="greedy decoding would propose the same revision"):
        Revise(do_sample=False, candidates=2)


KILL_SCRIPT = """
import sys
from cai_lightning.constitution.stage import Revise
from cai_lightning.data.datamodule import CodeInstructionDataModule
dm = CodeInstructionDataModule(source=sys.argv[1], vocab_size=300, max_length=128, cache_dir=sys.argv[2],
    constitution="default", revise=Revise(critique_tokens=8, revision_tokens=32, batch_size=2, workers=1))
dm.prepare_data()
"""


def test_killed_stage_resumes_to_exactly_the_uninterrupted_result(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(18))  # its train rows make several chunks of 2
    killed_cache = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(rows_path), str(killed_cache)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1])
    deadline = time.monotonic() + 120
    while not list(killed_cache.glob("constitution/*/chunk-000001.json")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the stage finished or failed before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [folder] = killed_cache.glob("constitution/*")
    finished = sorted(p.name for p in folder.glob("chunk-*.json"))
    assert 2 <= len(finished) and not (killed_cache / "manifest.json").exists()

    def final_dataset(cache: str):
        dm = CodeInstructionDataModule(
            source=str(rows_path), vocab_size=300, max_length=128, cache_dir=str(cache), constitution="default",
            revise=Revise(critique_tokens=8, revision_tokens=32, batch_size=2, workers=1),
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm, [dict(r) for r in dm.splits["train"]], [dict(r) for r in dm.preferences]

    resumed, resumed_train, resumed_pairs = final_dataset(killed_cache)
    chunks = len(list(folder.glob("chunk-*.json")))
    assert len(finished) < chunks, "killed after the last chunk: nothing was left to resume"
    assert not list(folder.glob(".chunk-*"))  # no half-written chunk survives as a chunk
    fresh, fresh_train, fresh_pairs = final_dataset(tmp_path / "fresh")
    assert resumed_train == fresh_train and resumed_pairs == fresh_pairs
    assert len({r["task_id"] or r["instruction"] for r in resumed_train}) == len(resumed_train)  # nothing twice
    assert resumed.manifest["constitution"]["rows"] == len(resumed_train)


def test_sampler_draws_from_the_distribution_transformers_samples_from():
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from cai_lightning.constitution.critic import TopKTopPSampler

    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -1.0, 0.9, -3.0, 0.0]]).repeat(40_000, 1)
    ids = torch.zeros(40_000, 1, dtype=torch.long)
    expected = logits[:1]
    for warp in (TemperatureLogitsWarper(0.8), TopKLogitsWarper(5), TopPLogitsWarper(0.9)):
        expected = warp(ids[:1], expected)
    expected = expected.softmax(-1)[0]  # what generate(do_sample=True) draws from
    torch.manual_seed(0)
    scores = TopKTopPSampler(0.8, 5, 0.9)(ids, logits)
    assert ((scores == 0).sum(-1) == 1).all() and (scores.isneginf().sum(-1) == 7).all()  # one token per row
    drawn = torch.bincount(scores.argmax(-1), minlength=8) / 40_000
    assert (drawn[expected == 0] == 0).all()  # outside top-k / top-p: never drawn
    assert torch.allclose(drawn, expected, atol=0.01), (drawn, expected)
