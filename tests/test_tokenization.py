import pytest

from cai_lightning.data.tokenization import IGNORE_INDEX as X
from cai_lightning.data.tokenization import build_example, train_bpe_tokenizer
from cai_lightning.prompts import format_prompt

EOS = 0


def test_prompt_is_masked_and_eos_is_a_label():
    example = build_example([5, 6, 7], [8, 9], EOS, max_length=10)
    assert example["input_ids"] == [5, 6, 7, 8, 9, EOS]
    assert example["labels"] == [X, X, X, 8, 9, EOS]


def test_unmasked_prompt_keeps_prompt_labels():
    example = build_example([5, 6], [8], EOS, max_length=10, mask_prompt=False)
    assert example["labels"] == [5, 6, 8, EOS]


def test_overflow_cuts_the_target_tail_first():
    example = build_example([5, 6, 7], [8, 9, 10, 11], EOS, max_length=5)
    assert example["input_ids"] == [5, 6, 7, 8, 9]
    assert example["labels"] == [X, X, X, 8, 9]


def test_exact_fit_keeps_eos():
    example = build_example([5, 6], [8], EOS, max_length=4)
    assert example["labels"] == [X, X, 8, EOS]


@pytest.mark.parametrize("prompt_len", [4, 5])
def test_prompt_that_fills_max_length_is_dropped(prompt_len):
    assert build_example(list(range(1, prompt_len + 1)), [8], EOS, max_length=4) is None


def test_template_drops_empty_input_section():
    assert "### Input:" not in format_prompt("Add two numbers.", "  ")
    with_input = format_prompt("Add two numbers.", "a = 1")
    assert "### Input:\na = 1\n\n### Output:\n" in with_input
    assert with_input.endswith("### Output:\n")


def test_trained_bpe_round_trips_code_and_has_distinct_pad_and_eos():
    code = "def f(x):\n    return {'a': x ** 2}  # ünïcode\n"
    tokenizer = train_bpe_tokenizer([code] * 20, vocab_size=300)
    ids = tokenizer(code, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == code
    assert len(ids) < len(code.encode())  # merges were learned
    assert tokenizer.pad_token == "[PAD]" and tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
