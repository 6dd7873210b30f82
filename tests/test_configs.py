"""The shipped configs: base.yaml and its overlays (``config: base.yaml`` or another config, then dotted keys).

Each config resolves as the CLI resolves it (``main([SUB, '--config', X, '--print_config'])``, in-process); the
overlay files themselves are read with ``yaml.safe_load`` to check how they are written.
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path

import pytest
import yaml

from cai_lightning.cli import main

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
OVERLAYS = [name for name in CONFIGS if "config" in yaml.safe_load((CONFIG_DIR / name).read_text())]
# each DPO config and the SFT config whose run it starts from (whose constitution stage it reuses)
SFT_OF_DPO = {"dpo.yaml": "default.yaml", "smollm2-dpo.yaml": "smollm2.yaml", "gpt2-medium-dpo.yaml": "gpt2-medium.yaml"}
# Keys an overlay may give with the value it already has from the file it includes: naming the logger's class
# again with a new logger name keeps class_path first in the saved config (without it, the same settings are
# written init_args first).
RESTATED_ON_PURPOSE = {"trainer.logger.class_path"}


@functools.cache
def _resolved_text(*configs: str, subcommand: str = "fit") -> str:
    args = [subcommand]
    for name in configs:
        args += ["--config", str(CONFIG_DIR / name)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"])
    assert exit_.value.code in (0, None), f"{configs} {subcommand}: exit {exit_.value.code}"
    return out.getvalue()


def resolved(*configs: str, subcommand: str = "fit") -> dict:
    """The config the CLI builds from these files, as ``--print_config`` prints it."""
    return yaml.safe_load(_resolved_text(*configs, subcommand=subcommand))


def flat(tree: dict, prefix: str = "") -> dict:
    """``{'a': {'b': 1}, 'c.d': [2]}`` -> ``{'a.b': 1, 'c.d': [2]}``: mappings walked to their values, lists kept whole
    (a list in a config is replaced whole, never merged)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def raw(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / name).read_text())


def given(name: str) -> dict:
    """Every key the file gives, its includes' keys included, flattened: what an overlay of it starts from."""
    own = flat(raw(name))
    include = own.pop("config", None)
    return {**(given(include) if include else {}), **own}


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_config_parses(config, subcommand):
    printed = resolved(config, subcommand=subcommand)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["data"]["init_args"]["source"]


@pytest.mark.parametrize("config", OVERLAYS)
def test_base_then_overlay_resolves_as_the_overlay_alone(config):
    assert resolved("base.yaml", config) == resolved(config)


@pytest.mark.parametrize("dpo", sorted(SFT_OF_DPO))
def test_dpo_config_uses_its_sft_configs_data(dpo):
    sft = SFT_OF_DPO[dpo]
    sft_config, dpo_config = resolved(sft), resolved(dpo)
    sft_data, dpo_data = flat(sft_config["data"]["init_args"]), flat(dpo_config["data"]["init_args"])
    assert dpo_config["data"]["class_path"].endswith("PreferenceDataModule"), dpo
    # batch_size: SFT examples per step against DPO pairs per step (each pair is two sequences).
    # revise.critic: the same critic either way, checked below: where the SFT config has null (model.pretrained,
    # the model itself) the DPO config names that model, its own model.pretrained being the SFT run's export.
    allowed_to_differ = {"batch_size", "revise.critic"}
    differing = {key for key in (sft_data.keys() & dpo_data.keys()) - allowed_to_differ if sft_data[key] != dpo_data[key]}
    assert not differing, f"{dpo} and {sft} resolve to different data settings: " + ", ".join(
        f"{key}: {dpo_data[key]!r} against {sft_data[key]!r}" for key in sorted(differing))
    sft_critic = sft_data["revise.critic"] or sft_config["model"]["init_args"]["pretrained"]
    assert dpo_data["revise.critic"] == sft_critic, f"{dpo}: critic {dpo_data['revise.critic']!r}, {sft}'s is {sft_critic!r}"


def test_every_preference_config_is_paired_with_its_sft_config():
    preference = {name for name in CONFIGS if resolved(name)["data"]["class_path"].endswith("PreferenceDataModule")}
    assert preference == set(SFT_OF_DPO)
    assert all(raw(dpo)["config"] == sft for dpo, sft in SFT_OF_DPO.items())  # an overlay of that SFT config


@pytest.mark.parametrize("config", OVERLAYS)
def test_overlay_gives_no_key_its_include_already_gives(config):
    own = flat(raw(config))
    include = own.pop("config")
    inherited = given(include)
    redundant = sorted(key for key, value in own.items()
                       if key in inherited and inherited[key] == value and key not in RESTATED_ON_PURPOSE)
    assert not redundant, f"{config} gives {', '.join(redundant)} the value it already has from {include} (or its includes)"


@pytest.mark.parametrize("config", OVERLAYS)
def test_overlay_sets_dotted_keys_only(config):
    # A block (`trainer:` or `data:` with keys under it) in a file with `config:` replaces the included file's
    # whole block: what it leaves out falls back to the class defaults instead of the included file's settings.
    blocks = sorted(key for key, value in raw(config).items() if isinstance(value, dict))
    assert not blocks, f"{config}: {', '.join(blocks)} given as a block; give each value as a dotted key"


@pytest.mark.parametrize("config", OVERLAYS)
def test_overlay_changes_only_the_keys_it_gives(config):
    own = flat(raw(config))
    include = own.pop("config")
    before, after = flat(resolved(include)), flat(resolved(config))
    changed = sorted(key for key in before.keys() & after.keys()
                     if before[key] != after[key] and key not in own)
    assert not changed, f"{config} changes what it does not give: " + ", ".join(
        f"{key}: {after[key]!r}, {include} has {before[key]!r}" for key in changed)
