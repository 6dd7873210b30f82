"""The critic (``constitution/critic.py``): batched, seeded generation with either decoder, the shared
prefill of a prompt's candidates, a Hub-style model with a chat template, and a critic that will not load."""

from __future__ import annotations

import pytest

from cai_lightning.constitution.critic import Critic
from cai_lightning.data.tokenization import train_bpe_tokenizer
from cai_lightning.errors import ConfigError
from tests.conftest import make_rows, save_tiny_gpt2


def test_random_critic_generates_batched_and_seeded(tmp_path):
    tokenizer = train_bpe_tokenizer([r["instruction"] + r["output"] for r in make_rows(20)], 300)
    critic = Critic.random(tokenizer, seed=1, device="cpu")
    prompts = ["short", "a much longer prompt than the first one, to be left-padded"]
    batched = critic.generate(prompts, max_new_tokens=6, n=2, seed=3)
    assert len(batched) == 2 and all(len(texts) == 2 for texts in batched)
    assert batched == critic.generate(prompts, max_new_tokens=6, n=2, seed=3)  # same seed, same text
    alone = critic.generate(prompts[:1], max_new_tokens=6, n=1, do_sample=False)
    assert alone == critic.generate(prompts, max_new_tokens=6, n=1, do_sample=False)[:1]  # left padding is masked


def test_candidates_share_one_prefill_without_changing_what_is_generated():
    tokenizer = train_bpe_tokenizer([r["instruction"] + r["output"] for r in make_rows(20)], 300)
    critic = Critic.random(tokenizer, seed=2, device="cpu")
    prompts = ["x = 1", "a longer prompt, left-padded in the batch: def add(a, b):"]
    for decoder in ("own", "transformers"):
        greedy = critic.generate(prompts, max_new_tokens=8, n=2, do_sample=False, decoder=decoder)
        assert greedy == [[one[0], one[0]] for one in critic.generate(prompts, max_new_tokens=8, n=1, do_sample=False, decoder=decoder)]
    shared = critic.generate(prompts, max_new_tokens=8, n=3, seed=4, decoder="transformers")
    assert critic.model.config._attn_implementation == "sdpa"  # decode_attention was for that call only
    critic._shared_prefill = False  # the prompts repeated 3 times, each copy encoded
    assert shared == critic.generate(prompts, max_new_tokens=8, n=3, seed=4, decoder="transformers")


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


def test_lookup_changes_neither_what_the_stage_writes_nor_its_key(tmp_path):
    from cai_lightning.constitution import DEFAULT_PATH, Constitution
    from cai_lightning.constitution.critic import critic_identity
    from cai_lightning.constitution.stage import ConstitutionStage, stage_fingerprint
    from cai_lightning.settings import Revise

    rows = make_rows(4)
    tokenizer = train_bpe_tokenizer([r["instruction"] + r["output"] for r in rows], 300)
    critic = Critic.random(tokenizer, seed=3, device="cpu")
    constitution = Constitution.load(DEFAULT_PATH)
    written = []
    for lookup in (0, 4):
        settings = Revise(response_source="model", critique_tokens=8, revision_tokens=24, workers=1, lookup=lookup)
        stage = ConstitutionStage(constitution, settings, tmp_path / f"lookup-{lookup}", lambda: critic)
        critic.decode_stats = {}
        written.append(stage.run(rows, progress=False))
        assert critic.decode_stats["fed"] > critic.decode_stats["row_steps"] or not lookup  # guesses were fed
    assert written[0] == written[1]
    identity = critic_identity(None, 3, len(tokenizer))
    assert len({stage_fingerprint(rows, constitution, identity, Revise(lookup=k), "cpu") for k in (0, 4)}) == 1
    with pytest.raises(ConfigError, match="lookup"):
        Revise(lookup=-1)
