"""The settings dataclasses (``cai_lightning/settings.py``): every rule a ``data.revise`` or ``model.generation``
setting is checked against when it is built, each with a message naming the key, and the defaults passing."""

from __future__ import annotations

import dataclasses

import pytest

from cai_lightning.errors import ConfigError
from cai_lightning.settings import Generation, Revise


def test_the_defaults_are_valid_and_frozen():
    revise, generation = Revise(), Generation()
    assert revise.uses_critic and revise.decoder == "own" and revise.must_pass == ("correctness", "safety")
    with pytest.raises(dataclasses.FrozenInstanceError):
        revise.rounds = 2
    assert generation.max_new_tokens == 128


@pytest.mark.parametrize(("settings", "message"), [
    ({"rounds": 0}, "data.revise.rounds must be at least 1, got 0"),
    ({"batch_size": 0}, "data.revise.batch_size must be at least 1"),
    ({"critique_tokens": 0}, "data.revise.critique_tokens must be at least 1"),
    ({"revision_tokens": -1}, "data.revise.revision_tokens must be at least 1"),
    ({"top_k": -1}, "data.revise.top_k must be 0 .any token. or more"),
    ({"candidates": -1}, "data.revise.candidates must be 0 or more"),
    ({"candidates": 0, "fixers": False}, "nothing would propose a revision"),
    ({"generated_tests": 1}, "must be 0 .off. or at least 2"),
    ({"generated_tests": -2}, "must be 0 .off. or at least 2"),
    ({"generated_tests": 2, "do_sample": False, "candidates": 1}, "generated_tests needs data.revise.do_sample: true"),
    ({"generated_tests": 2, "candidates": 0}, "generated_tests needs the critic"),
    ({"response_source": "model", "candidates": 0}, "response_source: model needs the critic"),
    ({"do_sample": False, "candidates": 2}, "greedy decoding would propose the same revision each time"),
    ({"splits": ("train", "dev")}, "unknown split.s. dev"),
    ({"decoder": "vllm"}, "data.revise.decoder must be own or transformers, got 'vllm'"),
    ({"workers": 0}, "data.revise.workers must be at least 1"),
    ({"must_pass": ("safety", "safety")}, "names a principle twice"),
    ({"on_failure": "skip"}, "data.revise.on_failure must be drop or keep, got 'skip'"),
])
def test_a_bad_revise_setting_is_refused_with_its_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        Revise(**settings)


@pytest.mark.parametrize(("settings", "uses"), [
    ({}, True), ({"candidates": 0}, False), ({"candidates": 0, "fixers": True}, False),
    ({"candidates": 1, "do_sample": False}, True),
])
def test_uses_critic_says_whether_a_model_is_needed_at_all(settings, uses):
    assert Revise(**settings).uses_critic is uses


@pytest.mark.parametrize(("settings", "message"), [
    ({"num_beams": 2, "num_return_sequences": 3}, r"num_return_sequences \(3\) must not exceed model.generation.num_beams \(2\)"),
    ({"max_new_tokens": None}, "set model.generation.max_new_tokens or model.generation.max_length"),
])
def test_a_bad_generation_setting_is_refused_with_its_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        Generation(**settings)


def test_sampling_may_return_more_sequences_than_beams():
    assert Generation(num_beams=1, num_return_sequences=4, do_sample=True).num_return_sequences == 4
    assert Generation(max_new_tokens=None, max_length=64).max_length == 64
