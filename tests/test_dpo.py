"""Preference optimisation (``dpo.py``): the losses against hand computations, the reference log-probs computed
once and cached, a few steps that learn, and the two-step recipe (SFT, then DPO) through the CLI. The pairs
themselves (tokenizing, checks, formats) are tested in test_preference.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cai_lightning.cli import main
from cai_lightning.data.preference import PairCollator, tokenize_pairs
from cai_lightning.data.tokenization import IGNORE_INDEX, load_pretrained_tokenizer
from cai_lightning.dpo import PreferenceLM, preference_loss, sequence_logps
from cai_lightning.errors import ConfigError
from conftest import TINY, pair_rows, pairs_datamodule, save_tiny_gpt2, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
DEFAULT, DPO = str(ROOT / "configs" / "default.yaml"), str(ROOT / "configs" / "dpo.yaml")


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dpo_and_ipo_losses_equal_a_hand_computation():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    beta = 0.5
    h = [(-3.0 + 3.5) - (-4.0 + 3.0), (-5.0 + 4.0) - (-2.0 + 2.5)]  # 1.5, -1.5
    losses, chosen, rejected = preference_loss(pc, pr, rc, rr, beta)
    assert losses.tolist() == pytest.approx([-math.log(_sigmoid(beta * x)) for x in h])
    assert chosen.tolist() == pytest.approx([0.25, -0.5]) and rejected.tolist() == pytest.approx([-0.5, 0.25])
    smoothed, _, _ = preference_loss(pc, pr, rc, rr, beta, label_smoothing=0.2)
    assert smoothed.tolist() == pytest.approx(
        [-0.8 * math.log(_sigmoid(beta * x)) - 0.2 * math.log(_sigmoid(-beta * x)) for x in h]
    )
    ipo, _, _ = preference_loss(pc, pr, rc, rr, beta, loss_type="ipo")
    assert ipo.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h])


def test_sequence_logps_sum_the_labelled_tokens_only_eos_included():
    # vocabulary of 3; one row: prompt token 0, response tokens 1 then EOS=2, then padding
    logits = torch.log(torch.tensor([[
        [0.2, 0.5, 0.3],  # predicts position 1 (prompt -> first response token 1): p = 0.5
        [0.1, 0.1, 0.8],  # predicts position 2 (EOS): p = 0.8
        [0.6, 0.2, 0.2],  # predicts position 3 (padding): not counted
        [0.3, 0.3, 0.4],
    ]]))
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, IGNORE_INDEX]])
    assert sequence_logps(logits, labels).tolist() == pytest.approx([math.log(0.5) + math.log(0.8)])


def test_reference_logps_are_computed_once_cached_reused_and_redone_for_another_reference(tmp_path, capsys):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(6))
    first_model = save_tiny_gpt2(tmp_path / "sft")
    module = pairs_datamodule(tmp_path, pairs, first_model)
    module.prepare_data()
    module.setup("fit")
    assert "Built preference pairs" in capsys.readouterr().out
    assert sorted(module.pair_splits["train"]["pair_id"]) == list(range(6))
    policy = PreferenceLM(pretrained=str(first_model))
    policy.connect(module.tokenizer)
    saved = []  # tensors kept for a backward pass: none without gradients
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        table = policy.reference_table(module, torch.device("cpu"), "32-true")
    assert saved == []
    assert "Computed the reference log-probs of 6 pairs" in capsys.readouterr().out
    assert table.shape == (6, 2) and (table < 0).all()
    # the cached values are the starting model's log-probs, looked up by the batch's pair ids
    policy.configure_model()
    policy.eval()
    policy._reference_table = table
    batch = next(iter(module.train_dataloader()))
    assert "reference_logps" not in batch and batch["pair_ids"].shape == (4,)
    with torch.no_grad():
        logps = sequence_logps(policy(batch["input_ids"], batch["attention_mask"]), batch["labels"])
    assert logps.tolist() == pytest.approx(policy._reference_logps(batch).tolist(), abs=1e-4)

    again = pairs_datamodule(tmp_path, pairs, first_model)
    again.prepare_data()
    again.setup("fit")
    assert "Reusing cached preference pairs" in capsys.readouterr().out
    assert torch.equal(PreferenceLM(pretrained=str(first_model)).reference_table(again, torch.device("cpu"), "32-true"), table)
    assert "Reusing cached reference log-probs" in capsys.readouterr().out
    other_model = save_tiny_gpt2(tmp_path / "other")  # same architecture and tokenizer, other weights
    torch.manual_seed(1)
    from transformers import GPT2LMHeadModel

    GPT2LMHeadModel(GPT2LMHeadModel.from_pretrained(other_model).config).save_pretrained(other_model)
    other = PreferenceLM(pretrained=str(other_model)).reference_table(again, torch.device("cpu"), "32-true")
    assert "Computed the reference log-probs of 6 pairs" in capsys.readouterr().out and not torch.equal(other, table)
    bf16 = PreferenceLM(pretrained=str(first_model)).reference_table(again, torch.device("cpu"), "bf16-mixed")
    assert "Computed" in capsys.readouterr().out and bf16.shape == table.shape  # another precision: its own entry


def test_preference_training_needs_a_model_to_start_from():
    with pytest.raises(ConfigError, match="model.pretrained is required"):
        PreferenceLM()


def test_a_few_steps_raise_reward_accuracy_and_margin_on_the_training_pairs(tmp_path):
    folder = save_tiny_gpt2(tmp_path / "sft")
    tokenizer = load_pretrained_tokenizer(str(folder))
    examples, _, _ = tokenize_pairs(pair_rows(8), tokenizer, max_length=64)
    module = PreferenceLM(pretrained=str(folder), beta=0.1)
    module.connect(tokenizer)
    module.configure_model()
    batch = PairCollator(tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        batch["reference_logps"] = sequence_logps(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def rewards() -> tuple[float, float]:
        with torch.no_grad():
            logps = sequence_logps(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        ref = batch["reference_logps"]
        _, chosen, rejected = preference_loss(logps[:8], logps[8:], ref[:8], ref[8:], 0.1)
        return (chosen > rejected).float().mean().item(), (chosen - rejected).mean().item()

    accuracy_before, margin_before = rewards()
    assert margin_before == pytest.approx(0.0, abs=1e-5)  # the policy is the reference at step 0
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    for _ in range(10):
        logps = sequence_logps(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        ref = batch["reference_logps"]
        losses, _, _ = preference_loss(logps[:8], logps[8:], ref[:8], ref[8:], 0.1)
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
    accuracy_after, margin_after = rewards()
    assert accuracy_after == 1.0 > accuracy_before and margin_after > margin_before + 0.1


@pytest.mark.slow
def test_sft_then_dpo_through_the_cli_with_checkpoint_resume_and_export(workdir, rows_file, capsys, monkeypatch):
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(workdir / "cache"))  # where a .ckpt is converted
    main(["fit", "--config", DEFAULT, *TINY, f"--data.source={rows_file}", "--data.cache_dir=cache", "--trainer.max_epochs=1"])
    sft = workdir / "lightning_logs/default/version_0/hf_model"
    assert (sft / "config.json").exists()
    dpo_args = [
        "--config", DPO, *TINY, f"--model.pretrained={sft}", f"--data.source={rows_file}", "--data.cache_dir=cache",
        "--model.learning_rate=0.001", "--data.pairs_val_fraction=0.3",
    ]
    main(["fit", *dpo_args, "--trainer.max_epochs=2"])
    out = capsys.readouterr().out
    assert "Constitution stage: reusing all" in out  # the SFT run's stage, and so its pairs
    assert "Built preference pairs" in out and "Computed the reference log-probs" in out
    run = workdir / "lightning_logs/dpo/version_0"
    assert (run / "checkpoints/last.ckpt").exists() and (run / "hf_model/config.json").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    scalars = set(events.Tags()["scalars"])
    for name in ("train/loss_epoch", "val/loss", "val/rewards/accuracy", "val/rewards/margin", "train/rewards/chosen_epoch",
                 "train/rewards/rejected_epoch", "train/logps/chosen_epoch", "train/logps/rejected_epoch"):
        assert name in scalars, (name, sorted(scalars))
    step = torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"]
    main(["fit", *dpo_args, "--trainer.max_epochs=3", "--ckpt_path=last"])
    out = capsys.readouterr().out
    assert "Reusing cached preference pairs" in out and "Reusing cached reference log-probs" in out
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] > step

    # the SFT run's checkpoint is a model to start from too: converted once into the very network it exported
    from transformers import AutoModelForCausalLM

    checkpoint = workdir / "lightning_logs/default/version_0/checkpoints/last.ckpt"
    main(["fit", *dpo_args, f"--model.pretrained={checkpoint}", "--trainer.max_epochs=1"])
    out = capsys.readouterr().out
    assert "Reusing cached tokenized dataset" in out and "Reusing cached preference pairs" in out
    assert "Computed the reference log-probs" in out  # another reference: its own log-probs
    (converted,) = (workdir / "cache/models").glob("ckpt-default-version_0-last-*")
    exported, restored = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (sft, converted))
    assert exported.keys() == restored.keys() and all(torch.equal(exported[k], restored[k]) for k in exported)
    assert (workdir / "lightning_logs/dpo/version_1/hf_model/config.json").exists()


def test_preference_pairs_go_with_the_preference_model(workdir, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", DEFAULT, *TINY, "--data.class_path=cai_lightning.data.preference.PreferenceDataModule"])
    assert exit.value.code == 2 and "PreferenceDataModule goes with model: class_path: cai_lightning.dpo.PreferenceLM" in capsys.readouterr().err
