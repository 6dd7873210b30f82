"""Preference optimisation, the second half of Constitutional AI (RL-CAI) done the way open recipes do it:
DPO (Rafailov et al. 2023) or IPO (Azar et al. 2023) on (prompt, chosen, rejected) pairs, where chosen is
the constitution's revision and rejected the response it replaced.

The policy starts from a fine-tuned model (``model.pretrained``: an SFT run's ``hf_model`` folder) and is
pushed to raise the likelihood of chosen over rejected *relative to* that starting model, the reference.
The reference's log-probabilities are computed once, when the model is set up for ``fit`` or ``validate``
(before the policy's network is built, so never two models in memory), and cached beside the pairs under the
reference's identity, device type and precision (:meth:`PreferenceLM.reference_table`); ``reference: live`` keeps
a frozen copy instead (the baseline the speed/memory benchmark compares against).

Dropout is off in the policy (as in TRL): with it, the policy's log-probs would differ from the
reference's at step 0 and the loss would start from noise. Everything else (the network, ``[PAD]``, AdamW
and its schedule, beam-search samples, checkpoints, export, ``test``: SFT loss and execution-based
evaluation on the held-out tasks) is :class:`~cai_lightning.model.CodeLM`'s.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Literal

import torch
import torch.nn.functional as F

from cai_lightning.data.preference import PairCollator, PreferenceDataModule
from cai_lightning.data.tokenization import IGNORE_INDEX
from cai_lightning.errors import ConfigError
from cai_lightning.model import CodeLM
from cai_lightning.pretrained import model_identity

LossType = Literal["sigmoid", "ipo"]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's labelled tokens, summed: ``(N, T, V)`` logits and ``(N, T)`` labels
    (``-100`` on prompt and padding; EOS is a label) → ``(N,)``. Logits at position t predict token t+1."""
    targets = labels[:, 1:]
    token_logps = -F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
    ).view_as(targets)
    return (token_logps * (targets != IGNORE_INDEX)).sum(-1)


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair loss and the implicit rewards, from summed log-probs ``(B,)`` of the policy and the reference.

    With ``h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)``:

    - ``sigmoid`` (DPO): ``-(1 - ε) log σ(β h) - ε log σ(-β h)``, ε = ``label_smoothing`` (the "conservative
      DPO" of noisy labels; 0 is plain DPO);
    - ``ipo``: ``(h - 1 / (2β))²``, on summed log-probs as in the IPO paper (TRL averages them per token).

    Rewards are ``β (policy - reference)`` of each side. Returns ``(losses, chosen_rewards, rejected_rewards)``.
    """
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ConfigError(f"model.loss_type must be sigmoid or ipo, got {loss_type!r}")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


class PreferenceLM(CodeLM):
    """A causal LM trained by preference optimisation on (prompt, chosen, rejected) pairs.

    Args:
        pretrained: The model to start from and the reference: an SFT run's ``hf_model`` folder or
            checkpoint (``.ckpt``), a Hub id, a ``.gguf`` file or a short name (see ``CodeLM``). Required.
        beta: Strength of the pull towards the reference (DPO's β): small β lets the policy move further.
            0.1 is the common choice (Hugging Face's CAI recipe).
        loss_type: ``sigmoid`` (DPO) or ``ipo``.
        label_smoothing: DPO's ε: the assumed share of pairs whose preference is wrong (0: plain DPO).
        sft_weight: Weight of an SFT term, the chosen response's mean token NLL, added to the loss. With few
            pairs, plain DPO tends to lower the chosen response's likelihood too (both sides fall, rejected
            faster); a small SFT term keeps the chosen side up.
        reference: ``cached``: the reference log-probs come with the data, computed once (no second
            model in memory); ``live``: a frozen copy of the starting model computes them every step.
        learning_rate, weight_decay, warmup_fraction: As in ``CodeLM``, with defaults for preference
            optimisation: a small learning rate (1e-6 to 1e-5 for pretrained models), no decay.
        **kwargs: The rest of ``CodeLM``'s settings (``betas``, ``min_lr_ratio``, ``generation``; its ``n_*``
            and ``dropout`` are unused, the network coming from ``pretrained``).
    """

    def __init__(
        self,
        pretrained: str | None = None,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        sft_weight: float = 0.0,
        reference: Literal["cached", "live"] = "cached",
        learning_rate: float = 5e-6,
        weight_decay: float = 0.0,
        warmup_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        if pretrained is None:
            raise ConfigError(
                "model.pretrained is required for preference training: the model to start from, usually an SFT "
                "run's export (lightning_logs/<name>/version_N/hf_model)"
            )
        if beta <= 0:
            raise ConfigError(f"model.beta must be positive, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"model.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if loss_type == "ipo" and label_smoothing:
            raise ConfigError("model.label_smoothing applies to loss_type sigmoid only")
        super().__init__(
            pretrained=pretrained, learning_rate=learning_rate, weight_decay=weight_decay,
            warmup_fraction=warmup_fraction, **kwargs,
        )
        self.save_hyperparameters()
        self._reference: torch.nn.Module | None = None  # live mode only; outside the module tree (not saved)
        self._reference_table: torch.Tensor | None = None  # cached mode: (pairs, 2) log-probs by pair id, on the CPU

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        for module in self.model.modules():  # as TRL does: the policy's log-probs must be the reference's at step 0
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if self.hparams.reference == "live":
            reference = copy.deepcopy(self.model).eval().requires_grad_(False)
            object.__setattr__(self, "_reference", reference)  # not a submodule: no state dict, no optimizer

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.reference == "cached" and stage in ("fit", "validate") and self._reference_table is None:
            trainer = self.trainer
            if not isinstance(trainer.datamodule, PreferenceDataModule):
                raise ConfigError("model.reference: cached needs data: class_path: cai_lightning.data.preference.PreferenceDataModule")
            self._reference_table = self.reference_table(
                trainer.datamodule, trainer.strategy.root_device, str(trainer.precision),
                compute=trainer.local_rank == 0, barrier=trainer.strategy.barrier,
            )

    def reference_table(self, datamodule, device: torch.device, precision: str, compute: bool = True,
                        barrier=lambda: None) -> torch.Tensor:
        """The reference model's summed log-probs of every pair of ``datamodule`` (``pair_examples``), chosen and
        rejected, ``(pairs, 2)`` by pair id: read from ``reference-<key>.pt`` beside the pairs in their cache, or
        computed there once (on ``device``, under ``precision``) when ``compute`` (a node's first rank; the others
        wait at ``barrier``, then read it). The key holds the reference's identity (``model.pretrained``, by
        content for a file), the device type and the precision: another reference means new log-probs."""
        identity = {"model": model_identity(self.hparams.pretrained, "model.pretrained"), "device": device.type,
                    "precision": precision}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        path = datamodule.pair_cache_dir / f"reference-{key}.pt"
        if compute and not path.exists():
            examples = datamodule.pair_examples()
            logps = reference_logps(examples, self.hparams.pretrained, datamodule.tokenizer, device, precision,
                                    datamodule.hparams.reference_batch_size)
            table = torch.tensor(logps, dtype=torch.float32)  # row i: pair i (ids are 0..n-1)
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            torch.save({"identity": identity, "logps": table}, partial)
            os.replace(partial, path)  # atomic: whole or absent
            print(f"Computed the reference log-probs of {len(examples)} pairs: {path}")
        elif compute:
            print(f"Reusing cached reference log-probs {path}")
        barrier()
        return torch.load(path, weights_only=True)["logps"]

    def on_fit_start(self) -> None:
        if self._reference is not None:
            self._reference.to(self.device)

    def _reference_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(2B,)``: the chosen rows' reference log-probs, then the rejected rows'."""
        if self._reference is None:
            if "reference_logps" in batch:  # given with the batch (benchmarks, tests)
                return batch["reference_logps"]
            if self._reference_table is None or "pair_ids" not in batch:
                raise RuntimeError("model.reference: cached needs the pairs' ids and their reference log-probs "
                                   "(PreferenceDataModule, and the model set up by a Trainer)")
            table = self._reference_table[batch["pair_ids"].cpu()]  # (B, 2)
            return torch.cat([table[:, 0], table[:, 1]]).to(batch["input_ids"].device)
        with torch.no_grad():
            logits = self._reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return sequence_logps(logits, batch["labels"])

    def _preference_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """``batch`` holds each pair's chosen row then, ``B`` rows later, its rejected row."""
        hp = self.hparams
        logits = self(batch["input_ids"], batch["attention_mask"])  # (2B, T, V)
        logps = sequence_logps(logits, batch["labels"])  # (2B,)
        reference = self._reference_logps(batch).to(logps.dtype)
        n = logps.size(0) // 2
        losses, chosen_rewards, rejected_rewards = preference_loss(
            logps[:n], logps[n:], reference[:n], reference[n:], hp.beta, hp.loss_type, hp.label_smoothing
        )
        loss = losses.mean()
        metrics = {
            f"{stage}/preference_loss": loss.detach(),
            f"{stage}/rewards/chosen": chosen_rewards.mean(),
            f"{stage}/rewards/rejected": rejected_rewards.mean(),
            f"{stage}/rewards/margin": (chosen_rewards - rejected_rewards).mean(),
            f"{stage}/rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            f"{stage}/logps/chosen": logps[:n].detach().mean(),
            f"{stage}/logps/rejected": logps[n:].detach().mean(),
        }
        if hp.sft_weight:
            chosen_labels = batch["labels"][:n, 1:]
            tokens = (chosen_labels != IGNORE_INDEX).sum().clamp(min=1)
            nll = -logps[:n].sum() / tokens  # the chosen side's mean token NLL
            loss = loss + hp.sft_weight * nll
            metrics[f"{stage}/sft_nll"] = nll.detach()
        metrics[f"{stage}/loss"] = loss.detach()
        self.log_dict(metrics, on_step=stage == "train", on_epoch=True, prog_bar=False, batch_size=n)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._preference_step(batch, "train")
        self.log("train/loss_step", loss, prog_bar=True, batch_size=batch["input_ids"].size(0) // 2)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        self._batch_tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._preference_step(batch, "val")


@torch.no_grad()
def reference_logps(examples: list[dict], pretrained: str, tokenizer, device: torch.device, precision: str,
                    batch_size: int) -> list[tuple[float, float]]:
    """Summed log-probs of each pair's chosen and rejected response under the reference model: the policy
    as it starts (built exactly as :class:`~cai_lightning.dpo.PreferenceLM` builds it), in eval mode, under
    the trainer's precision. The model is freed before training starts."""
    from tqdm.auto import tqdm

    module = PreferenceLM(pretrained=pretrained)
    module.connect(tokenizer)
    module.configure_model()
    model = module.model.to(device).eval()
    collate = PairCollator(tokenizer.pad_token_id)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    out: list[tuple[float, float]] = []
    for start in tqdm(range(0, len(examples), batch_size), desc="reference log-probs", unit="batch"):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + batch_size]).items()}
        with autocast:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps = sequence_logps(logits, batch["labels"]).float().cpu().tolist()
        n = len(logps) // 2
        out.extend(zip(logps[:n], logps[n:]))
    del model, module
    return out
