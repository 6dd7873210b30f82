"""Shared fixtures: small data files in the Hub dataset's schema, and CLI flags for a tiny, fast run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The tests are offline by design: a mistyped Hub id fails at once instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Flags that shrink any config to seconds on a CPU: a 1-layer, 32-wide GPT-2, short sequences, 2 beams.
TINY = [
    "--model.n_layer=1", "--model.n_head=2", "--model.n_embd=32", "--model.n_positions=128",
    "--data.max_length=128", "--data.vocab_size=300", "--data.batch_size=8",
    "--model.generation.num_beams=2", "--model.generation.num_return_sequences=2",
    "--model.generation.max_new_tokens=8", "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false", "--data.revise.critique_tokens=8", "--data.revise.revision_tokens=24",
]


def make_rows(n: int) -> list[dict]:
    """``n`` valid rows in the Hub dataset's schema (instruction, input, output, prompt), plus the task
    fields of the shipped set (entry_point, tests)."""
    rows = []
    for i in range(n):
        instruction = f"Write a function add_{i}(x) that returns x plus {i}."
        given = f"x = {i}" if i % 3 == 0 else ""
        output = f"def add_{i}(x):\n    return x + {i}\n"
        tests = f"assert add_{i}(1) == {1 + i}\nassert add_{i}(-{i}) == 0"
        rows.append({"instruction": instruction, "input": given, "output": output, "prompt": instruction,
                     "entry_point": f"add_{i}", "tests": tests})
    return rows


def make_mbpp_rows(n: int) -> list[dict]:
    """``n`` tasks in MBPP's schema, as its ``mbpp.jsonl`` writes them (numeric ``task_id``, CRLF line ends and
    2-space indents in ``code``): a helper defined before the function the tests call, so the entry point is
    found by the tests' calls, not by the first definition."""
    return [{
        "task_id": 600 + i, "text": f"Write a function to multiply a number by {i + 2}.",
        "code": f"def _factor():\r\n  return {i + 2}\r\ndef times_{i}(x):\r\n  return x * _factor()",
        "test_list": [f"assert times_{i}(3) == {3 * (i + 2)}", f"assert times_{i}(0) == 0"],
        "test_setup_code": "", "challenge_test_list": [],
    } for i in range(n)]


def make_humaneval_rows(n: int) -> list[dict]:
    """``n`` tasks in HumanEval's schema: a signature and docstring to complete, a ``check(candidate)`` test."""
    return [{
        "task_id": f"HumanEval/{i}", "prompt": f'def double_{i}(x):\n    """Return x times {i + 2}."""\n',
        "canonical_solution": f"    return x * {i + 2}\n", "entry_point": f"double_{i}",
        "test": f"\n\nMETADATA = {{}}\n\n\ndef check(candidate):\n    assert candidate(3) == {3 * (i + 2)}\n",
    } for i in range(n)]


def tiny_bpe_tokenizer():
    """A 300-token BPE trained on 40 shipped-style rows, as the offline default trains one."""
    from cai_lightning.data.tokenization import train_bpe_tokenizer
    from cai_lightning.prompts import format_prompt

    rows = make_rows(40)
    return train_bpe_tokenizer([format_prompt(r["instruction"]) + r["output"] for r in rows], vocab_size=300)


def tiny_code_lm(tokenizer, **kwargs):
    """A 1-layer 32-wide ``CodeLM`` with its network built, the same weights every call."""
    import torch

    from cai_lightning.model import CodeLM

    torch.manual_seed(0)
    module = CodeLM(**{"n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 128, "dropout": 0.0, **kwargs})
    module.connect(tokenizer)
    module.configure_model()
    return module


def counting_calls(monkeypatch, module, name):
    """Wrap ``module.name`` so that the list returned records the first argument of every call."""
    calls, original = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args[0] if args else None)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def rows_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", make_rows(60))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` so ``lightning_logs/`` and the cache land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def save_tiny_gpt2(directory: Path, texts: list[str] | None = None) -> Path:
    """A stand-in for ``gpt2-medium`` saved with ``save_pretrained``: a GPT-2 tokenizer *without* a pad
    token (like the real one) and a 1-layer GPT2LMHeadModel sized to it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts or [r["instruction"] + r["output"] for r in make_rows(60)], trainer)
    tokenizer = GPT2TokenizerFast(tokenizer_object=backend)
    assert tokenizer.pad_token is None
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# SmolLM2-Instruct's chat template (ChatML), minus its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_llama(directory: Path, texts: list[str] | None = None) -> Path:
    """A stand-in for ``HuggingFaceTB/SmolLM2-135M-Instruct`` saved with ``save_pretrained``: a byte-level
    BPE tokenizer laid out like SmolLM2's (``<|endoftext|>`` 0, ``<|im_start|>`` 1 = BOS, ``<|im_end|>`` 2 =
    EOS *and* PAD, a ChatML chat template) and a 1-layer LlamaForCausalLM with tied embeddings and
    grouped-query attention, saved in bf16 as SmolLM2 is."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    from cai_lightning.prompts import format_prompt

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    # Trained on the formatted prompts too, so the template's words are single tokens: prompts fit a
    # 128-token data.max_length, as in TINY.
    texts = texts or [format_prompt(r["instruction"], r["input"]) + r["output"] for r in make_rows(60)]
    backend.train_from_iterator(texts, trainer)
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def pairs_datamodule(tmp_path: Path, pairs: Path, reference: Path):
    """A PreferenceDataModule as the trainer would prepare it, with ``reference`` as model.pretrained."""
    from cai_lightning.data.preference import PreferenceDataModule

    module = PreferenceDataModule(
        pairs=str(pairs), pairs_val_fraction=0.0, source=str(write_jsonl(tmp_path / "rows.jsonl", make_rows(20))),
        tokenizer=str(reference), max_length=256, cache_dir=str(tmp_path / "cache"), batch_size=4,
    )
    return module


def pair_rows(n: int) -> list[dict]:
    """``n`` preference pairs of one-line functions: the chosen returns, the rejected passes."""
    return [{"prompt": f"Write f{i}.\n", "chosen": f"def f{i}():\n    return {i}\n", "rejected": f"def f{i}():\n    pass\n"}
            for i in range(n)]
