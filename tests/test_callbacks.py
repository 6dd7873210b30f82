"""The callbacks: what each does at its hook, with a tiny model (the CLI-level runs are in test_cli.py)."""

from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from cai_lightning.callbacks import ExecutionEval
from cai_lightning.errors import ConfigError
from cai_lightning.evaluation import Problem
from cai_lightning.prompts import format_prompt
from cai_lightning.settings import Generation
from conftest import tiny_bpe_tokenizer, tiny_code_lm


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_bpe_tokenizer()


def test_evaluation_generates_in_batches_the_samples_it_drew_task_by_task(tokenizer):
    module = tiny_code_lm(tokenizer)
    module.eval()
    instructions = ["Add.", "Write a function add_1(x) that returns x plus 1.", "Reverse a string.", "Sort a list of numbers.", "Sum."]
    problems = [Problem(f"t{i}", format_prompt(text), "f", "assert f(1) == 2") for i, text in enumerate(instructions)]
    trainer = SimpleNamespace(
        is_global_zero=True, strategy=None, precision_plugin=SimpleNamespace(forward_context=nullcontext),
    )
    sampling = Generation(num_beams=1, num_return_sequences=2, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=8)
    one_by_one = ExecutionEval(sampling, batch_size=1)._generate(trainer, module, problems, "tasks")
    batched = ExecutionEval(sampling, batch_size=3)._generate(trainer, module, problems, "tasks")
    assert batched == one_by_one and [len(c) for c in batched] == [2] * 5  # in task order, each task's own draws
    reseeded = ExecutionEval(sampling, batch_size=3, seed=99)._generate(trainer, module, problems, "tasks")
    assert reseeded != batched
    with pytest.raises(ConfigError, match="batch_size"):
        ExecutionEval(sampling, batch_size=0)
