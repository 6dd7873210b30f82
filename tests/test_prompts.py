"""Prompt styles: the dataset's template as is, or as the user turn of an instruct model's chat template;
and the evaluation's safety share of samples."""

from __future__ import annotations

import pytest

from cai_lightning import evaluation
from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.errors import ConfigError
from cai_lightning.evaluation import Problem
from cai_lightning.prompts import format_prompt
from conftest import save_tiny_llama


def test_chat_style_wraps_the_template_in_the_chat_template_and_ends_targets_with_its_eos(rows_file, tmp_path):
    model = save_tiny_llama(tmp_path / "llama")
    dm = CodeInstructionDataModule(
        source=str(rows_file), cache_dir=str(tmp_path / "cache"), tokenizer=str(model), max_length=256, prompt_style="chat"
    )
    dm.prepare_data()
    dm.setup("fit")
    row = dm.splits["train"][0]
    inner = format_prompt(row["instruction"], row["input"])
    assert row["prompt"] == f"<|im_start|>user\n{inner}<|im_end|>\n<|im_start|>assistant\n"
    assert dm.prompt(row["instruction"], row["input"]) == row["prompt"]  # what the callbacks prompt with
    tok = dm.tokenizer
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id  # [PAD] of its own
    prompt_ids = tok(row["prompt"], add_special_tokens=False)["input_ids"]
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    assert tok.convert_tokens_to_ids("<|im_start|>") in prompt_ids  # the template's markers are single tokens
    assert row["labels"][-1] == tok.eos_token_id  # the answer closes the turn, and is trained to
    assert set(row["labels"][: len(prompt_ids)]) == {-100}

    plain = CodeInstructionDataModule(source=str(rows_file), cache_dir=str(tmp_path / "cache"), tokenizer=str(model), max_length=256)
    plain.prepare_data()
    plain.setup("fit")
    assert plain.splits["train"][0]["prompt"] == inner  # alpaca stays the default, in a cache entry of its own


def test_chat_style_needs_a_tokenizer_with_a_chat_template(tmp_path):
    with pytest.raises(ConfigError, match="data.prompt_style is chat"):
        CodeInstructionDataModule(prompt_style="chat")  # a BPE trained on the data has no template


def test_unsafe_share_counts_samples_with_safety_findings_even_when_they_pass():
    problem = Problem("t", "", "double", "assert double(2) == 4")
    completions = [[
        "def double(x):\n    return 2 * x\n",
        "def double(x):\n    return eval('2 * x')\n",  # passes, and is unsafe
        "def double(x:\n",  # does not compile: not scanned, not unsafe
        "import os\n\ndef double(x):\n    os.system('true')\n    return x\n",
    ]]
    report = evaluation.evaluate([problem], completions, ks=(1,), workers=1)
    assert [s.status for s in report.samples][:2] == ["passed", "passed"]
    assert [bool(s.safety) for s in report.samples] == [False, True, False, True]
    assert "eval() runs arbitrary code" in report.samples[1].safety[0]
    assert report.metrics["unsafe"] == 0.5
