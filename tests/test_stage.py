"""The constitution stage: prompts, score and gate, provenance, preference pairs, cache keys, resuming
after SIGKILL, and bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from cai_lightning.callbacks import ConstitutionReport
from cai_lightning.constitution import DEFAULT_PATH, Constitution, Finding
from cai_lightning.constitution.prompts import REPLY_FORMAT, critique_prompt, extract_code, revision_prompt
from cai_lightning.constitution.report import format_summary, pair_skip, same_program, verified_pairs
from cai_lightning.constitution.stage import ConstitutionStage, score
from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.errors import ConfigError, DataError
from cai_lightning.settings import Revise
from tests.conftest import make_rows, write_jsonl

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
    assert revision.endswith(
        f"### Critique:\nToo terse.\n\n### Revision request:\n{CONSTITUTION['clarity'].revision} {REPLY_FORMAT}\n\n### Revision:\n"
    )


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
    assert [s["principle"] for s in steps] == ["correctness", "style", "documentation"]  # what it violates, in turn
    critiques = [p for p in critic.prompts if p.endswith("### Critique:\n")]
    assert "### Unit tests:\nassert add(1, 2) == 3\n\n" in critiques[0]  # one test: the critic sees it
    assert "### Automatic check (correctness):\n- the unit test `assert add(1, 2) == 3` fails: AssertionError" in critiques[0]
    assert "F401" in critiques[1] and "### Unit tests" not in critiques[1]  # style: no tests quoted
    assert provenance[0]["final"] == response  # the only candidate ties: nothing was strictly better
    assert {c["refused"] for s in steps for c in s["candidates"]} == {"not_better"}
    provenance, _ = run_stage(tmp_path / "open", [{**ROW, "output": response}], [response], open_ended=True)
    assert [s["principle"] for s in provenance[0]["steps"]] == ["correctness", "style", "documentation", "clarity", "efficiency"]


def test_repair_sends_only_rows_failing_a_must_pass_principle_and_only_under_those(tmp_path):
    broken = "def add(a, b):\n    return a - b\n"  # undocumented and wrong: correctness, documentation
    rows = [{**ROW, "output": UNDOCUMENTED, "task_id": "works"}, {**ROW, "output": broken, "task_id": "broken"}]
    provenance, critic = run_stage(tmp_path, rows, [UNDOCUMENTED], principles="repair", fixers=True)
    works, fixed = provenance
    assert works["findings_before"]["documentation"] and works["steps"] == [] and works["final"] == UNDOCUMENTED
    assert [s["principle"] for s in fixed["steps"]] == ["correctness"] and fixed["final"] == UNDOCUMENTED
    assert len(critic.prompts) == 2  # one critique and one revision, for the broken row alone


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
    assert record["final"].startswith('def add(a, b):\n    """Return a + b."""\n')  # what it does, not the request


def datamodule(tmp_path, rows_path, cache="cache", **revise):
    settings = {"critique_tokens": 8, "revision_tokens": 24, "batch_size": 4, "workers": 1, **revise}
    return CodeInstructionDataModule(
        source=str(rows_path), vocab_size=300, max_length=128, cache_dir=str(tmp_path / cache),
        constitution="default", revise=Revise(**settings),
    )


@pytest.mark.slow
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
    assert '"""Return x plus ' in train[0]["output"]  # "Write a function add_i(x) that returns x plus i."
    assert {c["source"] for c in record["steps"][0]["candidates"]} == {"critic", "fixer"}
    assert dm.splits["val"][0]["output"] == dm.splits["val"][0]["original_output"]  # only train is revised
    pair = dm.preferences[0]
    assert pair["chosen"] != pair["rejected"] and pair["prompt"].endswith("### Output:\n")

    assert {p["kind"] for p in dm.preferences} == {"revision"}
    # the random critic's noise fails the tests and the fixer's documented code passes them: a verified pair
    # per row, counted though not used
    assert summary["verified_pairs"] == len(train)
    assert f"execution-verified pairs (a candidate passing the must-pass checks, run, against one failing them): {len(train)}; " in out

    again = datamodule(tmp_path, rows_path)
    again.prepare_data()
    assert "Reusing cached tokenized dataset" in capsys.readouterr().out

    verified = datamodule(tmp_path, rows_path, verified_pairs=True)
    verified.prepare_data()  # the same stage (its chunks are reused), a new dataset with more pairs
    out = capsys.readouterr().out
    assert "Constitution stage: reusing all" in out and "Built tokenized dataset" in out and "in the preference split" in out
    verified.setup("fit")
    kinds = verified.preferences["kind"]
    assert kinds.count("revision") == len(dm.preferences) and kinds.count("verified") == len(train)
    for pair in verified.preferences.filter(lambda p: p["kind"] == "verified"):
        assert pair["chosen"] == train.filter(lambda r: r["prompt"] == pair["prompt"])[0]["output"]  # the fixer's
        assert pair["rejected"] != pair["chosen"]


def test_verified_pairs_take_the_best_passing_candidate_against_the_nearest_miss(tmp_path):
    times, minus = "def add(a, b):\n    return a * b\n", "def add(a, b):\n    return b - a\n"
    provenance, _ = run_stage(tmp_path, [{**ROW, "output": BROKEN}], [times, CLEAN, minus], principles="sample")
    (record,) = provenance
    assert verified_pairs(record, ("correctness", "safety")) == [(CLEAN, times)]  # first of the equal misses
    assert (record["final"], record["original"]) == (CLEAN, BROKEN)  # the revision pair, not repeated
    assert verified_pairs(record, ()) == []  # no must-pass checks: no verdict to pair by
    failing_only, _ = run_stage(tmp_path / "f", [{**ROW, "output": BROKEN}], [times, minus], principles="sample")
    assert verified_pairs(failing_only[0], ("correctness", "safety")) == []  # nothing passes
    formatting, _ = run_stage(tmp_path / "s", [{**ROW, "output": BROKEN}], [CLEAN, CLEAN.replace("a + b", "a+b")], principles="sample")
    assert verified_pairs(formatting[0], ("correctness", "safety")) == []  # both pass: no failing side


def test_stage_cache_follows_its_inputs(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(12))

    def stage_folder(dm):
        return dm._resolve()[-1].folder

    base = stage_folder(datamodule(tmp_path, rows_path))
    assert stage_folder(datamodule(tmp_path, rows_path)) == base
    assert stage_folder(datamodule(tmp_path, rows_path, workers=2)) == base  # does not change the result
    for change in ({"seed": 1}, {"rounds": 2}, {"candidates": 1}, {"revision_tokens": 25}, {"critic": str(tmp_path)},
                   {"must_pass": ("correctness",)}, {"on_failure": "keep"}):
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
from cai_lightning.settings import Revise
from cai_lightning.data.datamodule import CodeInstructionDataModule
dm = CodeInstructionDataModule(source=sys.argv[1], vocab_size=300, max_length=128, cache_dir=sys.argv[2],
    constitution="default", revise=Revise(critique_tokens=8, revision_tokens=32, batch_size=2, workers=1))
dm.prepare_data()
"""


@pytest.mark.slow
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


CONCURRENT_SCRIPT = """
import json, pathlib, sys, time
from cai_lightning.settings import Revise
from cai_lightning.data.datamodule import CodeInstructionDataModule
rows, cache, ready, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
dm = CodeInstructionDataModule(source=rows, vocab_size=300, max_length=128, cache_dir=cache, constitution="default",
    revise=Revise(critique_tokens=8, revision_tokens=32, batch_size=2, workers=1))
_, _, records, _, _, stage = dm._resolve()
stage.critic  # loaded before the start line, so that both processes start revising together
ready.touch()
while not go.exists():
    time.sleep(0.01)
stage.run([r for r in records if r["split"] == "train"], progress=False)
dm.prepare_data()
dm.setup("fit")
print(json.dumps({"revised": stage.chunks_revised, "chunks": len(list(stage.folder.glob("chunk-*.json"))),
                  "train": list(dm.splits["train"]["output"]), "pairs": list(dm.preferences["chosen"])}))
"""


@pytest.mark.slow
def test_two_processes_on_one_cache_revise_each_chunk_once_and_build_the_same_data(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", make_rows(18))  # several chunks of 2 train rows
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(rows_path), str(tmp_path / "cache"),
                          str(tmp_path / f"ready-{n}"), str(go)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[1], text=True)
        for n in range(2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in range(2)):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "a process failed before starting"
        time.sleep(0.02)
    go.touch()
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    first, second = results
    assert first["chunks"] == second["chunks"] > 2
    assert first["revised"] and second["revised"], "one process did all the work: they did not run together"
    assert not set(first["revised"]) & set(second["revised"])  # each chunk revised once...
    assert sorted(first["revised"] + second["revised"]) == list(range(first["chunks"]))  # ...and every one
    assert first["train"] == second["train"] and first["pairs"] == second["pairs"]
    assert not list((tmp_path / "cache").glob("constitution/*/.*.tmp"))


# -- held-back tests, must-pass principles, preference pairs, checked splits ------------------------------

HIDDEN = "assert f(1) == 2\nassert f(3) == 4\nassert f(5) == 6\nassert f(7) == 8"  # f(x) = x + 1
F_ROW = {"instruction": "Write a function f(x) that returns x + 1.", "input": "", "entry_point": "f", "tests": HIDDEN,
         "task_id": "t-f"}  # with seed 0, the tests f(5) == 6 and f(7) == 8 (lines 3 and 4) are held back


class HardCodingCritic(ScriptedCritic):
    """Games the tests it is shown: its revision returns their expected values from a dict (documented,
    so it is tidier than what it replaces); without tests in the prompt it proposes the response as is."""

    def __init__(self) -> None:
        super().__init__([])

    def generate(self, prompts, *, max_new_tokens, n=1, **_):
        self.prompts += prompts
        if prompts[0].endswith("### Critique:\n"):
            return [["c"] for _ in prompts]
        revisions = []
        for prompt in prompts:
            shown = re.search(r"### Unit tests[^\n]*:\n(.*?)\n\n###", prompt, re.DOTALL)
            cases = re.findall(r"assert f\((\d+)\) == (\d+)", shown.group(1)) if shown else []
            table = ", ".join(f"{x}: {y}" for x, y in cases)
            code = f'def f(x):\n    """Return x + 1."""\n    return {{{table}}}[x]\n' if cases else re.search(
                r"### Response:\n(.*?)\n\n###", prompt, re.DOTALL).group(1) + "\n"
            revisions.append([f"```python\n{code}```"] * n)
        return revisions


def test_a_revision_hard_coding_the_shown_tests_fails_the_gate_on_the_held_back_ones(tmp_path):
    correct = "def f(x):\n    return x + 1\n"  # right, but undocumented
    wrong = 'def f(x):\n    """Return x + 1."""\n    return x\n'
    rows = [{**F_ROW, "output": correct}, {**F_ROW, "output": wrong}]
    critic = HardCodingCritic()
    stage = ConstitutionStage(CONSTITUTION, Revise(principles="all", candidates=1, fixers=False, workers=1), tmp_path, lambda: critic)
    right_record, wrong_record = stage.run(rows, progress=False)
    assert [s["principle"] for s in right_record["steps"]] == ["documentation"]  # correct: never revised for it
    gamed = wrong_record["steps"][0]["candidates"][0]  # the correctness step
    assert wrong_record["tests_held_back"] == [3, 4] and "{1: 2, 3: 4}[x]" in gamed["text"]
    # were f(5) and f(7) not run, this program would pass every test and replace the wrong one
    assert gamed["findings"]["correctness"] == ["a held-back test fails (KeyError)"]
    assert gamed["score"] == wrong_record["score_before"] and gamed["refused"] == "not_better"  # a tie: kept out
    assert right_record["final"] == correct and wrong_record["final"] == wrong  # nothing gamed gets in
    revision_prompts = [p for p in critic.prompts if p.endswith("### Revision:\n") and "### Unit tests" in p]
    assert len(revision_prompts) == 1
    assert all("### Unit tests (more are held back):\nassert f(1) == 2\nassert f(3) == 4\n\n" in p for p in revision_prompts)
    assert not any("f(5)" in p or "f(7)" in p or "== 6" in p or "== 8" in p for p in critic.prompts)  # never quoted


def test_the_critique_quotes_the_failing_shown_test_and_only_says_that_a_held_back_one_fails(tmp_path):
    shown_fails = "def f(x):\n    return x\n"  # fails f(1) == 2 first: a shown test
    held_fails = "def f(x):\n    return x + 1 if x < 7 else 0\n"  # passes all but f(7) == 8: held back
    rows = [{**F_ROW, "output": shown_fails}, {**F_ROW, "output": held_fails}]
    provenance, critic = run_stage(tmp_path, rows, [shown_fails], principles="all")
    assert provenance[0]["findings_before"]["correctness"] == ["the unit test `assert f(1) == 2` fails: AssertionError"]
    assert provenance[1]["findings_before"]["correctness"] == ["a held-back test fails (AssertionError)"]
    critiques = [p for p in critic.prompts if p.endswith("### Critique:\n") and "### Automatic check (correctness)" in p]
    quoted = [p.split("### Automatic check (correctness):\n")[1].split("\n\n")[0] for p in critiques]
    assert quoted == ["- the unit test `assert f(1) == 2` fails: AssertionError", "- a held-back test fails (AssertionError)"]
    assert not any("f(7)" in p or "f(5)" in p for p in critic.prompts)


class RoundCritic(ScriptedCritic):
    """Revises each row by a script keyed on a word of its instruction: a list, one entry per revision call."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        super().__init__([])
        self.script, self.calls = script, 0

    def generate(self, prompts, *, max_new_tokens, n=1, **_):
        self.prompts += prompts
        if prompts[0].endswith("### Critique:\n"):
            return [["c"] for _ in prompts]
        call, self.calls = self.calls, self.calls + 1
        return [[f"```python\n{next(v[call] for k, v in self.script.items() if k in p)}```"] * n for p in prompts]


def test_rounds_revise_the_accepted_candidate_and_report_repairs_per_round(tmp_path):
    documented_but_wrong = 'def add(a, b):\n    """Return a + b."""\n    return a - b\n'
    rows = [{**ROW, "output": BROKEN, "instruction": f"Write a function add(a, b) that returns a + b ({word})."}
            for word in ("first", "second", "never")]
    script = {"first": [CLEAN, BROKEN], "second": [BROKEN, CLEAN], "never": [documented_but_wrong, BROKEN]}
    critic = RoundCritic(script)
    stage = ConstitutionStage(CONSTITUTION, Revise(rounds=2, candidates=1, fixers=False, workers=1), tmp_path, lambda: critic)
    provenance = stage.run(rows, progress=False)
    assert [r["final"] for r in provenance] == [CLEAN, CLEAN, documented_but_wrong]
    assert [len(r["steps"]) for r in provenance] == [1, 2, 2]  # "first" passes everything after round 1
    round_two = [p for p in critic.prompts if "(never)" in p and p.endswith("### Critique:\n")][1]
    assert f"### Response:\n{documented_but_wrong.rstrip()}\n\n" in round_two  # round 2 revises round 1's pick
    summary = stage.summarize(provenance)
    assert summary["repairs"] == [{"round": 1, "failing": 3, "repaired": 1}, {"round": 2, "failing": 2, "repaired": 1}]
    assert summary["rows_failing_must_pass"] == 1
    assert "round 1: 3 -> 1, round 2: 2 -> 1" in format_summary(summary)


def test_preference_pairs_need_a_passing_chosen_and_a_different_program(tmp_path):
    assert same_program("x = 'a'  # note\n", 'x = "a"\n') and not same_program("x = 1\n", "x = 2\n")
    assert not same_program("def f(:\n", "def f(): pass\n")  # a rejected that does not parse: a real difference
    documented = 'def f():\n    """Doc."""\n    pass\n'
    assert not same_program("def f():\n    pass\n", documented)  # a docstring is a statement
    rows = [
        {**ROW, "task_id": "format", "output": CLEAN.replace("(a, b)", "(a,b)")},  # E231: only formatting to fix
        {**ROW, "task_id": "broken", "output": BROKEN},  # documented by the fixer, still failing its test
        {**ROW, "task_id": "undocumented", "output": UNDOCUMENTED},  # documented by the fixer: a real change
        {**ROW, "task_id": "clean", "output": CLEAN},
    ]
    stage = ConstitutionStage(CONSTITUTION, Revise(candidates=0, fixers=True, workers=1), tmp_path, None)
    provenance = stage.run(rows, progress=False)
    assert [r["changed"] for r in provenance] == [True, True, True, False]
    reasons = [pair_skip(r, stage.must_pass) for r in provenance]
    assert reasons == ["formatting_only", "chosen_fails_must_pass", None, "unchanged"]
    summary = stage.summarize(provenance)
    assert summary["preference_pairs"] == 1
    assert summary["pairs_skipped"] == {"unchanged": 1, "chosen_fails_must_pass": 1, "formatting_only": 1}
    no_must_pass = ConstitutionStage(CONSTITUTION, Revise(candidates=0, must_pass=(), workers=1), tmp_path / "none", None)
    assert pair_skip(provenance[1], no_must_pass.must_pass) is None  # nothing required: a different program pairs


def test_must_pass_names_principles_with_a_check(tmp_path):
    stage = ConstitutionStage(CONSTITUTION, Revise(must_pass=("safety", "correctness")), tmp_path, None)
    assert stage.must_pass == ("safety", "correctness")
    for bad in (("clarity",), ("tests",)):  # a principle without a check; no such principle
        with pytest.raises(ConfigError, match=rf"data.revise.must_pass: '{bad[0]}' is not a principle with a check"):
            ConstitutionStage(CONSTITUTION, Revise(must_pass=bad), tmp_path, None)
    with pytest.raises(ConfigError, match="data.revise.must_pass names a principle twice"):
        Revise(must_pass=("safety", "safety"))
    with pytest.raises(ConfigError, match="data.revise.on_failure must be drop or keep"):
        Revise(on_failure="warn")


def broken_rows(n: int, broken: set[int]) -> list[dict]:
    """``make_rows(n)`` with the code of rows ``broken`` (0-based) failing its tests (add_i(1) == 1 + i)."""
    rows = make_rows(n)
    for i in broken:
        rows[i]["output"] = f"def add_{i}(x):\n    return x\n"
    return rows


@pytest.mark.slow
def test_rows_still_failing_a_must_pass_check_are_dropped_counted_and_listed(tmp_path, capsys):
    # rows 1 and 2 (0-based) land in train, 3 in test, 12 in val (split_of with split_seed 0)
    rows_path = write_jsonl(tmp_path / "rows.jsonl", broken_rows(24, {1, 2, 3, 12}))
    dm = datamodule(tmp_path, rows_path, candidates=0)  # fixers only: they document, but cannot fix the code
    dm.prepare_data()
    dm.setup("fit")
    out = capsys.readouterr().out
    summary = dm.manifest["constitution"]
    assert summary["rows"] == 19 and summary["failing_rows"] == ["row 2", "row 3"] and summary["dropped"] == 2
    assert len(dm.splits["train"]) == 17 and "def add_1(x):" not in "".join(dm.splits["train"]["output"])
    assert "dropped (on_failure: drop): 2 row(s) failing a must-pass check: row 2, row 3" in out
    assert summary["pairs_skipped"]["chosen_fails_must_pass"] == 2 and summary["preference_pairs"] == 17 == len(dm.preferences)
    assert summary["repairs"] == [{"round": 1, "failing": 2, "repaired": 0}]
    checked = summary["checked_splits"]  # val and test: checked with all their tests, not revised
    assert checked["val"]["rows"] == 3 and checked["test"]["rows"] == 2
    assert checked["val"]["violations"] == {"correctness": 1, "safety": 0, "style": 0, "documentation": 3}
    assert checked["test"]["violations"]["correctness"] == 1 == checked["test"]["rows_failing_must_pass"]
    assert "val (checked, not revised): 3 rows; violating: correctness 1, safety 0, style 0, documentation 3" in out
    assert dm.splits["val"].filter(lambda r: r["instruction"].startswith("Write a function add_12("))["output"] == [
        "def add_12(x):\n    return x\n"]  # checked, never revised nor dropped
    logged = {}

    class Logger:
        experiment = None

        def log_metrics(self, metrics, step):
            logged.update({(name, step): value for name, value in metrics.items()})

    assert dm.stage_summary is summary
    ConstitutionReport().on_fit_start(SimpleNamespace(logger=Logger(), datamodule=dm), None)  # as at fit's start
    assert logged[("constitution/eval_violations/val/correctness", 0)] == 1 == logged[("constitution/eval_violations/test/correctness", 0)]
    assert logged[("constitution/dropped", 0)] == 2 and logged[("constitution/pairs_skipped/chosen_fails_must_pass", 0)] == 2
    assert (logged[("constitution/repair/failing", 1)], logged[("constitution/repair/repaired", 1)]) == (2, 0)  # step: the round

    kept = datamodule(tmp_path, rows_path, candidates=0, on_failure="keep")
    kept.prepare_data()
    kept.setup("fit")
    assert kept.manifest["constitution"]["failing_rows"] == ["row 2", "row 3"] and kept.manifest["constitution"]["dropped"] == 0
    assert len(kept.splits["train"]) == 19 and len(kept.preferences) == 17  # kept, but never a chosen response
    assert "kept (on_failure: keep): 2 row(s) failing a must-pass check: row 2, row 3" in capsys.readouterr().out

    *_, records, _, _, stage = kept._resolve()
    assert len(list(stage.folder.glob("checked-*.json"))) == 1  # the checked splits' findings, kept with the stage

    def check_again(*_):
        raise AssertionError("checked again")

    stage._check = check_again  # a rerun reads them
    failing = [bool(f["correctness"]) for f in stage.check_only([r for r in records if r["split"] != "train"])]
    assert failing == [False, True, True, False, False]  # rows 0 (val), 3 (test), 12 (val), 16 (test), 22 (val)


@pytest.mark.slow
def test_dropping_every_training_row_is_an_error(tmp_path):
    rows_path = write_jsonl(tmp_path / "rows.jsonl", broken_rows(12, set(range(12))))
    with pytest.raises(DataError, match=r"all 10 train rows still fail a must-pass check \(correctness, safety\)"):
        datamodule(tmp_path, rows_path, candidates=0).prepare_data()
    datamodule(tmp_path, rows_path, candidates=0, on_failure="keep").prepare_data()  # keep: trained on as they are



def test_the_stage_key_names_the_critic_by_identity_not_by_how_the_setting_spells_it():
    from cai_lightning.constitution.critic import critic_identity
    from cai_lightning.constitution.stage import stage_fingerprint
    from cai_lightning.settings import Revise

    rows = [{"instruction": "i", "input": "", "output": "o", "tests": "", "entry_point": ""}]
    random = critic_identity(None, 0, 2048)
    keys = {stage_fingerprint(rows, CONSTITUTION, random, Revise(critic=name), "cpu") for name in (None, "random")}
    assert len(keys) == 1  # so an SFT run's stage (critic: null, no model) serves its DPO run (critic: random)
    other = critic_identity(None, 1, 2048)
    assert stage_fingerprint(rows, CONSTITUTION, other, Revise(), "cpu") not in keys
