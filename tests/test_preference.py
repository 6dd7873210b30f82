"""Preference data (``data/preference.py``): pairs tokenized with the prompt masked and collated chosen then
rejected, a bad pair or file named by its row and field, pairs from a folder laid out like a Hub dataset, and
pairs written as chat messages rendered with the chat template."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cai_lightning.data.preference import PairCollator, check_pairs, conversations_as_text, tokenize_pairs
from cai_lightning.data.tokenization import IGNORE_INDEX, load_pretrained_tokenizer
from cai_lightning.errors import DataError
from conftest import CHATML_TEMPLATE, pair_rows, pairs_datamodule, save_tiny_gpt2, save_tiny_llama, write_jsonl


def test_pairs_are_tokenized_apart_masked_and_collated_chosen_then_rejected(tmp_path):
    tokenizer = load_pretrained_tokenizer(str(save_tiny_gpt2(tmp_path / "m")))
    rows = [{"prompt": "add one", "chosen": "return x + 1", "rejected": "return x"},
            {"prompt": "x " * 40, "chosen": "a", "rejected": "b"}]  # this prompt alone fills max_length
    examples, dropped, truncated = tokenize_pairs(rows, tokenizer, max_length=24)
    assert (len(examples), dropped) == (1, 1)
    prompt = tokenizer("add one", add_special_tokens=False)["input_ids"]
    chosen = tokenizer("return x + 1", add_special_tokens=False)["input_ids"]
    pair = examples[0]
    assert pair["chosen_input_ids"] == prompt + chosen + [tokenizer.eos_token_id]
    assert pair["chosen_labels"] == [IGNORE_INDEX] * len(prompt) + chosen + [tokenizer.eos_token_id]
    batch = PairCollator(pad_id=tokenizer.pad_token_id)([{**pair, "reference_chosen": -1.0, "reference_rejected": -2.0}])
    n_chosen, n_rejected = len(pair["chosen_input_ids"]), len(pair["rejected_input_ids"])
    assert batch["input_ids"].shape == (2, max(n_chosen, n_rejected))
    assert batch["attention_mask"].sum(1).tolist() == [n_chosen, n_rejected]
    assert batch["labels"][1, n_rejected:].eq(IGNORE_INDEX).all()  # padding is no label
    assert batch["reference_logps"].tolist() == [-1.0, -2.0]
    cut, _, cut_count = tokenize_pairs([{"prompt": "add one", "chosen": "y " * 40, "rejected": "z"}], tokenizer, 24)
    assert cut_count == 1 and cut[0]["chosen_input_ids"][: len(prompt)] == prompt  # the prompt kept whole
    assert len(cut[0]["chosen_input_ids"]) == 24


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "line 2: field 'chosen' is empty"),
        ({"prompt": "p", "chosen": "same", "rejected": "same"}, "line 2: field 'chosen' is the same as 'rejected'"),
        ({"prompt": "p", "chosen": 3, "rejected": "r"}, "line 2: field 'chosen' must be a string, got int"),
    ],
)
def test_a_bad_pair_names_the_file_row_and_field(row, message):
    good = {"prompt": "p", "chosen": "c", "rejected": "r"}
    with pytest.raises(DataError, match=message):
        check_pairs([good, row], "pairs.jsonl", lines=[1, 2])


def test_a_pairs_file_without_a_column_is_an_error_naming_it(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c"}])
    module = pairs_datamodule(tmp_path, pairs, save_tiny_gpt2(tmp_path / "sft"))
    with pytest.raises(DataError, match="pairs.jsonl: no column 'rejected'"):
        module.prepare_data()


def test_pairs_from_a_folder_laid_out_like_a_hub_dataset_take_the_hub_path(tmp_path, capsys):
    folder = tmp_path / "hub-pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", pair_rows(5))  # load_dataset(folder, split=...) as for a Hub id
    module = pairs_datamodule(tmp_path, folder, save_tiny_gpt2(tmp_path / "sft"))
    module.prepare_data()
    module.setup("fit")
    assert len(module.pair_splits["train"]) == 5 and "5 read from" in capsys.readouterr().out


def _chat_pair(i: int) -> dict:
    """A row as HuggingFaceH4/ultrafeedback_binarized writes one: the user turn repeated in each side."""
    user = {"role": "user", "content": f"Write f{i}."}
    return {"prompt": f"Write f{i}.",
            "chosen": [user, {"role": "assistant", "content": f"def f{i}():\n    return {i}\n"}],
            "rejected": [user, {"role": "assistant", "content": f"def f{i}():\n    pass\n"}]}


def test_chat_message_pairs_render_with_the_chat_template(tmp_path, capsys):
    tokenizer = load_pretrained_tokenizer(str(save_tiny_llama(tmp_path / "llama")))
    assert tokenizer.chat_template == CHATML_TEMPLATE
    rendered = {"prompt": "<|im_start|>user\nWrite f1.<|im_end|>\n<|im_start|>assistant\n",
                "chosen": "def f1():\n    return 1\n", "rejected": "def f1():\n    pass\n"}
    assert conversations_as_text([_chat_pair(1)], tokenizer, "pairs") == [rendered]
    explicit = {"prompt": [{"role": "user", "content": "Write f1."}], "chosen": _chat_pair(1)["chosen"][1:],
                "rejected": _chat_pair(1)["rejected"][1:]}  # TRL's conversational format, explicit prompt
    answer_only = {**explicit, "prompt": "Write f1."}  # the sides hold the answer alone: the prompt is the user turn
    assert conversations_as_text([explicit, answer_only], tokenizer, "pairs") == [rendered, rendered]
    text = {"prompt": "p", "chosen": "c", "rejected": "r"}
    assert conversations_as_text([text], None, "pairs") == [text]  # text pairs need no template
    two_turns = {**_chat_pair(2), "chosen": _chat_pair(2)["chosen"] + [{"role": "user", "content": "more"}]}
    with pytest.raises(DataError, match=r"pairs: line 7: field 'chosen' must continue the prompt with one assistant "
                                        r"message, got \['assistant', 'user'\]"):
        conversations_as_text([_chat_pair(1), two_turns], tokenizer, "pairs", lines=[6, 7])
    with pytest.raises(DataError, match="row 1: field 'rejected' must be a list of"):
        conversations_as_text([{**_chat_pair(1), "rejected": "text"}], tokenizer, "pairs")
    with pytest.raises(DataError, match="pairs are chat messages, and rendering them needs a tokenizer with a chat template"):
        conversations_as_text([_chat_pair(1)], SimpleNamespace(chat_template=None), "pairs")

    folder = tmp_path / "hub-chat"  # a Hub preference dataset in chat messages, through the datamodule
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{k: v for k, v in _chat_pair(i).items() if k != "prompt"} for i in range(5)])
    module = pairs_datamodule(tmp_path, folder, tmp_path / "llama")
    module.prepare_data()
    module.setup("fit")
    assert len(module.pair_splits["train"]) == 5 and "5 read from" in capsys.readouterr().out
    assert module.pair_splits["train"][0]["prompt"].startswith("<|im_start|>user\nWrite f")
