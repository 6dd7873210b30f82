"""The stage's gate on untested rows, as real scraped data comes: a revision is kept only when it is proven
better, and no critic's candidate (emptied, renamed, broken, cut off) makes a row worse."""

from __future__ import annotations

import json

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.constitution.report import format_summary, verified_pairs
from cai_lightning.constitution.stage import ConstitutionStage
from cai_lightning.settings import Revise

CONSTITUTION = Constitution.load(DEFAULT_PATH)
RECURSING = "def factorial(n):\n    return n * factorial(n - 1)\n\n\nprint(factorial(5))\n"
FIXED = "def factorial(n):\n    if n <= 1:\n        return 1\n    return n * factorial(n - 1)\n\n\nprint(factorial(5))\n"
CLEAN = "def double(x):\n    return 2 * x\n\n\nprint(double(4))\n"  # runs; lacks a docstring


def row(instruction: str, output: str, input: str = "") -> dict:
    return {"instruction": instruction, "input": input, "output": output, "tests": "", "entry_point": "", "task_id": ""}


class Scripted:
    """Answers every critique with "c" and every revision request with replies scripted per principle."""

    name = "scripted"
    prompts_truncated = 0

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies, self.prompts = replies, []

    def generate(self, prompts, *, max_new_tokens, n=1, **_):
        self.prompts += prompts
        if prompts[0].endswith("### Critique:\n"):
            return [["c"] for _ in prompts]
        out = []
        for prompt in prompts:
            principle = prompt.split("### Automatic check (")[1].split(")")[0]
            out.append((self.replies.get(principle, []) + [""] * n)[:n])
        return out


def run(tmp_path, rows, replies, **settings):
    critic = Scripted(replies)
    settings = {"principles": "all", "candidates": max(len(v) for v in replies.values()), "fixers": True, "workers": 2, **settings}
    stage = ConstitutionStage(CONSTITUTION, Revise(**settings), tmp_path / "stage", lambda: critic)
    return stage, stage.run(rows, progress=False), critic


def fenced(code: str) -> str:
    return f"```python\n{code}```\n"


def test_only_a_proven_fix_is_kept_and_every_harmful_candidate_is_refused(tmp_path):
    replies = {"correctness": [
        "# I cannot help with that\n",  # no fence, nothing but a comment: trivial
        fenced("def fact(n):\n    return 1\n\n\nprint(fact(5))\n"),  # renamed
        "```python\ndef factorial(n):\n    if n <= 1:\n",  # cut off at the token limit
        fenced(FIXED),
    ]}
    stage, [record], critic = run(tmp_path, [row("Write a recursive factorial.", RECURSING)], replies)
    assert record["correctness_basis"] == "executed"
    assert record["findings_before"]["correctness"][0].startswith("running the program fails: RecursionError")
    assert "### Automatic check (correctness):\n- running the program fails: RecursionError" in critic.prompts[0]  # grounded
    step = record["steps"][0]
    assert [(c["source"], c["refused"]) for c in step["candidates"]] == [
        ("critic", "trivial"), ("critic", "dropped_name"), ("critic", "cut_off"), ("critic", None),
    ]
    assert step["candidates"][3]["behaviour"].startswith("fixed") and record["final"] == FIXED
    summary = stage.summarize([record])
    assert summary["refused"]["trivial"] == 1 and summary["refused"]["dropped_name"] == 1 and summary["refused"]["cut_off"] == 1
    assert "correctness meant: unit tests run for 0 row(s), the program executed for 1 row(s)" in format_summary(summary)
    [kept] = [json.loads(line) for line in (tmp_path / "stage" / "revisions.jsonl").read_text().splitlines()]
    assert (kept["original"], kept["revision"], kept["source"]) == (RECURSING, FIXED, "critic")
    assert kept["guards"][0]["behaviour"].startswith("fixed")


def test_a_clean_rows_behaviour_may_not_change_and_a_tie_goes_to_the_fixer(tmp_path):
    documented = 'def double(x):\n    """Return twice x."""\n    return 2 * x\n\n\nprint(double(4))\n'
    replies = {"documentation": [
        fenced('def double(x):\n    """Return twice x."""\n    return x + x + 1\n\n\nprint(double(4))\n'),  # a bug
        fenced(documented.replace("twice x", "2x")),  # as good as the fixer's: the tie goes to the fixer
        fenced('"""Doubles."""\n'),  # a docstring alone: the code deleted
    ]}
    _, [record], _ = run(tmp_path, [row("Write a function double(x) that returns x doubled.", CLEAN)], replies)
    candidates = record["steps"][0]["candidates"]
    assert candidates[0]["refused"] == "behaviour_changed" and "prints something else" in candidates[0]["behaviour"]
    assert candidates[2]["refused"] == "trivial"
    accepted = candidates[record["steps"][0]["accepted"]]
    assert accepted["source"] == "fixer" and candidates[1]["score"] == accepted["score"]


def test_an_unknown_run_accepts_only_what_cannot_change_behaviour(tmp_path):
    numpy = "import numpy as np\n\n\ndef mean(xs):\n    return float(np.mean(xs))\n"
    replies = {"documentation": [
        fenced('import numpy as np\n\n\ndef mean(xs):\n    """Mean of xs."""\n    return float(np.sum(xs))\n'),
        fenced('import numpy as np\n\n\ndef mean(xs):\n    """Mean of xs."""\n    return float(np.mean(xs))\n'),
    ]}
    _, [record], _ = run(tmp_path, [row("Compute the mean of a list with numpy.", numpy)], replies, fixers=False)
    assert record["correctness_basis"] == "parsed"  # the sandbox has no numpy: correctness was parsing only
    first, second = record["steps"][0]["candidates"]
    assert first["refused"] == "unverified" and second["refused"] is None and record["final"] == second["text"]
    assert verified_pairs(record, ("correctness", "safety")) == []  # nothing was executed: no verified pair


def test_a_row_violating_nothing_is_not_sent_to_the_critic(tmp_path):
    clean = 'def double(x):\n    """Return twice x."""\n    return 2 * x\n'
    _, [record], critic = run(tmp_path, [row("Write double(x).", clean)], {"documentation": [fenced(clean)]})
    assert record["steps"] == [] and critic.prompts == []


def test_another_language_is_left_alone_and_input_field_data_is_run(tmp_path):
    js = "function add(a, b) {\n    return a + b;\n}\nconsole.log(add(1, 2));\n"
    uses_data = "def total(xs):\n    return sum(xs)\n\n\nprint(total(arr))\n"
    replies = {"correctness": [fenced("def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n")],
               "documentation": [fenced('def total(xs):\n    """Sum."""\n    return sum(xs) + 1\n\n\nprint(total(arr))\n')]}
    _, records, _ = run(tmp_path, [row("Add two numbers in Python.", js), row("Sum the list.", uses_data, "arr = [3, 1, 2]")], replies)
    js_record, data_record = records
    assert js_record["final"] == js and {c["refused"] for s in js_record["steps"] for c in s["candidates"]} <= {"language", "empty"}
    assert data_record["behaviour_before"]["stdout"] == "6\n"  # the input field's `arr` defined the data
    [documentation] = [s for s in data_record["steps"] if s["principle"] == "documentation"]
    critic_candidate = documentation["candidates"][0]
    assert critic_candidate["refused"] == "behaviour_changed"


def test_code_that_does_not_parse_is_revised_for_correctness_whatever_else_it_violates(tmp_path):
    broken = "def is_even(n)\n    return n % 2 == 0\n"
    fixed = "def is_even(n):\n    return n % 2 == 0\n"
    _, [record], _ = run(tmp_path, [row("Check whether a number is even.", broken)], {"correctness": [fenced(fixed)]},
                         principles="sample")
    assert [s["principle"] for s in record["steps"]] == ["correctness"] and record["final"] == fixed


def test_a_class_without_example_calls_takes_only_a_docstring_from_the_critic(tmp_path):
    account = "class Account:\n    def __init__(self):\n        self.balance = 0\n\n    def deposit(self, amount):\n        self.balance += amount\n"
    broken = account.replace("self.balance += amount", '"""Add to the balance."""\n        self.balance -= amount')
    documented = account.replace("def deposit(self, amount):\n", 'def deposit(self, amount):\n        """Add to the balance."""\n')
    _, [record], _ = run(tmp_path, [row("Write an Account class with deposit.", account)],
                         {"documentation": [fenced(broken), fenced(documented)]}, fixers=False)
    first, second = record["steps"][0]["candidates"]
    assert record["behaviour_before"]["runs"] is False  # defines a class, runs nothing: a clean run shows nothing
    assert first["refused"] == "unverified" and second["refused"] is None and record["final"] == documented
