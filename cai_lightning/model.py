"""The LightningModule: a causal LM (a GPT-2 from a config offline, or any pretrained Hugging Face causal
LM) with a ``[PAD]`` token, AdamW with a warmup + cosine schedule, target-token metrics, and beam-search
generation (used by ``predict`` and the sample callback).

Why one long module: one LightningModule, whose hooks (setup, ``configure_model``, the steps, the optimizer,
checkpoint loading, generation) read best together, as Lightning's own examples keep them; its CPU kernels are
in ``kernels.py``, its decoding in ``generation.py``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.utilities import GradClipAlgorithmType
from torchmetrics import MeanMetric
from transformers import (
    AutoConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LogitsProcessorList,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
)

from cai_lightning.data.collate import PadCollator
from cai_lightning.data.tokenization import IGNORE_INDEX, decode_completions, tokenizer_fingerprint
from cai_lightning.errors import ConfigError
from cai_lightning.generation import FencedBlockEnd, TopKTopPSampler, decode, generators, supports_decode
from cai_lightning.kernels import CPU_SDPA, Dropout, replace_dropouts
from cai_lightning.pretrained import load_causal_lm, resolve_pretrained
from cai_lightning.settings import Generation


# Causal LMs whose logits are exactly ``lm_head(last hidden state)`` (their forward read in transformers 5.24): the
# loss applies the head to the positions with a target only. Others run their whole forward (Gemma soft-caps its
# logits, Granite scales them, ...).
PLAIN_HEAD_MODELS = frozenset({"gpt2", "llama", "mistral", "qwen2", "qwen3"})


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence, prompt + completion, a model's config says it covers; ``None`` if it names none.

    Llama-family configs call it ``max_position_embeddings``; GPT-2's ``n_positions`` answers to that name
    too (an alias in ``GPT2Config.attribute_map``), and is read directly for configs without the alias.
    """
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


class CodeLM(pl.LightningModule):
    """A causal LM fine-tuned on prompt-masked instruction → code examples.

    The tokenizer is runtime state, not a hyperparameter: it comes from the datamodule in ``setup``
    (or :meth:`connect` when used without a Trainer), and the network is built in ``configure_model``
    once its vocabulary is known.

    Args:
        pretrained: A Hugging Face causal LM to fine-tune: Hub name or folder (e.g. ``gpt2-medium``,
            ``HuggingFaceTB/SmolLM2-135M``), a ``.gguf`` file, a short name, or a ``.ckpt`` of an earlier
            run, resolved by ``cai_lightning.pretrained.resolve_pretrained``.
            GPT-2 checkpoints load as ``GPT2LMHeadModel``, any other architecture through
            ``AutoModelForCausalLM`` (remote code is never trusted). ``null`` builds a randomly
            initialised GPT-2 from the ``n_*`` settings below.
        n_layer: Transformer blocks (from-scratch only).
        n_head: Attention heads per block (from-scratch only).
        n_embd: Width of the residual stream (from-scratch only); a multiple of ``n_head``.
        n_positions: Longest sequence the position table covers (from-scratch only); must be at
            least ``data.max_length``.
        dropout: Dropout on embeddings and residuals (from-scratch only).
        attention_dropout: Dropout on attention probabilities (from-scratch only). 0 by default: on the default
            recipe it bought no validation loss at equal wall-clock time (configs/default.yaml says by how much;
            measured in fp32, where any other value sends attention from PyTorch's fused kernel to its unfused
            math path; in bf16 on the CPU attention is :func:`~cai_lightning.kernels.matmul_attention` either way, and dropout adds a
            (B, H, T, T) mask).
        learning_rate: Peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW decay on 2-D weights (matmuls, embeddings) only.
        betas: AdamW moment coefficients.
        warmup_fraction: Share of all optimizer steps spent warming the learning rate up linearly.
        min_lr_ratio: Cosine decay ends at ``learning_rate * min_lr_ratio``.
        resume_schedule: The learning rate of a ``fit`` resumed from a checkpoint (``--ckpt_path``) for more
            optimizer steps than the checkpoint's run was planned for (a larger ``trainer.max_epochs``):
            ``restart`` runs a new warmup + cosine from the resumed step to the new end, up to
            ``learning_rate`` again; ``continue`` keeps the checkpoint's schedule, so the added steps run at
            its floor (``learning_rate * min_lr_ratio``). ``restart`` by default: a longer run asks for
            more training, which the floor rarely gives. A run resumed for the same length continues its
            schedule exactly either way. See :class:`WarmupCosineLR`.
        generation: Beam-search settings for ``predict`` and the sample callback.
        compile: ``torch.compile`` the network's training and validation forward (generation stays eager).
            Pays a one-off compile (and a recompile for the first batches of new lengths) for faster
            steps; see configs/default.yaml for what it measured on a CPU.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        n_layer: int = 4,
        n_head: int = 4,
        n_embd: int = 256,
        n_positions: int = 512,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_fraction: float = 0.05,
        min_lr_ratio: float = 0.1,
        resume_schedule: Literal["restart", "continue"] = "restart",
        generation: Generation = Generation(),
        compile: bool = False,
    ) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ConfigError(f"model.n_embd ({n_embd}) must be a multiple of model.n_head ({n_head})")
        self.save_hyperparameters()
        self.generation = generation
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._tokenizer_fingerprint: str | None = None  # set with the tokenizer by connect()
        self.model: PreTrainedModel | None = None
        self._pretrained: tuple[str, PretrainedConfig] | None = None  # (folder, config), read once
        self.metrics = torch.nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("train", "val", "test") for name in ("loss", "acc")}
        )
        self._batch_tokens = 0  # target tokens in the current training batch
        self._last_batch_end: float | None = None
        self._plain_head = False  # the network is one of PLAIN_HEAD_MODELS; set by configure_model
        self._compiled_forward = None  # torch.compile'd forward of the body (or of the model), when model.compile

    # ---------------------------------------------------------------- building
    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Give the module its tokenizer (runtime state: vocabulary size, PAD and EOS ids)."""
        self.tokenizer = tokenizer
        self._tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)  # once, not on every checkpoint
        self._saved_tokenizer: dict[str, bytes] | None = None  # its files, for checkpoints (_tokenizer_files)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.tokenizer is None and datamodule is not None:
            self.connect(datamodule.tokenizer)
        if self.tokenizer is None:
            raise RuntimeError("CodeLM needs a tokenizer: use it with CodeInstructionDataModule or call connect()")
        max_length = getattr(getattr(datamodule, "hparams", None), "max_length", None)
        hp = self.hparams
        if max_length and hp.pretrained is None and max_length > hp.n_positions:
            raise ConfigError(
                f"data.max_length ({max_length}) exceeds model.n_positions ({hp.n_positions}); "
                "raise model.n_positions or lower data.max_length"
            )
        if max_length and hp.pretrained is not None:
            positions = context_length(self._pretrained_config()[1])
            if positions is not None and max_length > positions:
                raise ConfigError(
                    f"data.max_length ({max_length}) exceeds the context length of "
                    f"model.pretrained={hp.pretrained!r} ({positions} positions); lower data.max_length"
                )

    def _pretrained_config(self) -> tuple[str, PretrainedConfig]:
        """``model.pretrained`` resolved to what ``from_pretrained`` loads, and its config; read once (a GGUF
        file is converted on first resolution). Raises :class:`ConfigError` naming the flag."""
        if self._pretrained is None:
            name = self.hparams.pretrained
            folder = resolve_pretrained(name, "model.pretrained")
            try:
                config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            except (OSError, ValueError) as err:
                raise ConfigError(f"could not load model.pretrained={name!r}: {err}") from err
            self._pretrained = (folder, config)
        return self._pretrained

    def configure_model(self) -> None:
        if self.model is not None:
            return
        tok = self.tokenizer
        hp = self.hparams
        if hp.pretrained is not None:
            folder, config = self._pretrained_config()
            try:
                # fp32 master weights, whatever dtype the checkpoint was saved in: from_pretrained's default
                # dtype="auto" would keep a bf16 checkpoint (SmolLM2's) in bf16, and AdamW steps on bf16
                # weights lose small updates. trainer.precision (bf16-mixed) decides the compute dtype.
                model = load_causal_lm(folder, torch.float32, config)
            except (OSError, ValueError) as err:
                raise ConfigError(f"could not load model.pretrained={hp.pretrained!r}: {err}") from err
        else:
            config = GPT2Config(
                vocab_size=len(tok), n_positions=hp.n_positions, n_embd=hp.n_embd, n_layer=hp.n_layer,
                n_head=hp.n_head, resid_pdrop=hp.dropout, embd_pdrop=hp.dropout, attn_pdrop=hp.attention_dropout,
                # the exact (erf) GELU in one kernel, not GPT-2's tanh approximation (gelu_new, ~7 elementwise
                # ops): a from-scratch model needs no fidelity to it, and on bf16 activations erf ran 3x faster
                activation_function="gelu",
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            )
            model = GPT2LMHeadModel(config)
        if model.get_input_embeddings().num_embeddings < len(tok):
            # Room for [PAD]; new rows start at the mean embedding. Rounded up to a multiple of 64, which
            # matmul kernels prefer (nanoGPT's 50257 → 50304); the spare rows are never produced by the tokenizer.
            # With tied input/output embeddings (SmolLM2, most small Llamas) the resize keeps them tied.
            with torch.random.fork_rng(devices=[]):  # the new rows are drawn: the same every time this model is built
                torch.manual_seed(0)  # (DPO's reference, built apart from the policy, must be the very same network)
                model.resize_token_embeddings(len(tok), pad_to_multiple_of=64, mean_resizing=True)
        replace_dropouts(model, torch.nn.Dropout, Dropout)
        if model.config._attn_implementation == "sdpa":
            model.set_attn_implementation(CPU_SDPA)
        model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as they are
        model.config.pad_token_id = tok.pad_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
        self.model = model
        self._plain_head = model.config.model_type in PLAIN_HEAD_MODELS
        self._decodes = supports_decode(model)  # generate() runs generation.decode, else transformers' generate
        if hp.compile:  # the bound forward, not the module: no second copy of the weights in the state dict
            forward = (model.base_model if self._plain_head else model).forward
            self._compiled_forward = torch.compile(forward, dynamic=True)  # lengths change batch to batch

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """``trainer.gradient_clip_val`` where Lightning refuses it.

        * FSDP (Lightning #19235): each rank holds a shard of the gradients, so the norm is the FSDP root's
          ``clip_grad_norm_``, a collective over all shards (``torch.nn.utils.clip_grad_norm_`` would clip each
          shard by its own norm).
        * bf16-mixed with the fused AdamW (Lightning #21435): the mixed-precision plugin refuses to clip for any
          optimizer that could unscale gradients inside its step, although bf16 has no gradient scaler and so
          nothing to unscale; the gradients are clipped as under 32-true.
        """
        from torch.distributed.fsdp import FullyShardedDataParallel

        sharded = isinstance(self.trainer.model, FullyShardedDataParallel)
        if sharded and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        plugin = self.trainer.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.scaler is None and gradient_clip_val:
            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)  # the base class: no check
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_fingerprint"] = self._tokenizer_fingerprint
        # what makes a checkpoint a model on its own, so that model.pretrained takes a .ckpt (a DPO run
        # starting from an SFT checkpoint): the network's config and the tokenizer's files (a few MB at most)
        checkpoint["hf_config"] = self.model.config.to_dict()
        checkpoint["tokenizer_files"] = self._tokenizer_files()

    def _tokenizer_files(self) -> dict[str, bytes]:
        """The tokenizer as ``save_pretrained`` writes it, file name → bytes (written once per module)."""
        if self._saved_tokenizer is None:
            import tempfile

            with tempfile.TemporaryDirectory() as folder:
                self.tokenizer.save_pretrained(folder)
                self._saved_tokenizer = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return self._saved_tokenizer

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained with another tokenizer (its token ids would mean other strings, and
        every metric and completion would be silently wrong) or for another network than this config builds
        (another architecture or size: two models can share a tokenizer, SmolLM2-135M and -360M do), with a
        :class:`ConfigError` instead of the state-dict loader's list of mismatched tensors.

        Lightning calls this after ``configure_model`` and before loading the weights; when the network is
        not built yet (``load_from_checkpoint`` without a tokenizer) only the tokenizer is checked. Under FSDP
        the strategy has already loaded the weights into the sharded network and hands this hook no
        ``state_dict``: only the tokenizer is checked, and another network fails in torch's loader ("size
        mismatch for ...")."""
        saved = checkpoint.get("tokenizer_fingerprint")
        if saved is not None and self.tokenizer is not None and saved != self._tokenizer_fingerprint:
            raise ConfigError(
                "the checkpoint was trained with a different tokenizer than this config builds (different "
                "data.source content, data.vocab_size or model.pretrained): use the config the checkpoint "
                "was trained with (its run folder holds config.yaml)"
            )
        if self.model is None or "state_dict" not in checkpoint:
            return
        built = {name: tuple(t.shape) for name, t in self.state_dict().items()}
        stored = {name: tuple(t.shape) for name, t in checkpoint["state_dict"].items()}
        if built != stored:
            name = next(n for n in sorted(built.keys() | stored.keys()) if built.get(n) != stored.get(n))
            raise ConfigError(
                f"the checkpoint holds another network than this config builds (first difference: {name} is "
                f"{stored.get(name, 'absent')} in the checkpoint, {built.get(name, 'absent')} here; check "
                "model.pretrained and model.n_*): use the config the checkpoint was trained with (its run "
                "folder holds config.yaml)"
            )

    # ---------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict]:
        """The trainable weights as AdamW's two groups: 2-D tensors (matmul weights, embeddings) decayed by
        ``weight_decay``; biases and LayerNorm gains not, since shrinking those towards zero only fights the
        normalisation and buys no regularisation."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.hparams.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.parameter_groups()
        params = [p for group in groups for p in group["params"]]
        # AdamW's elementwise update as one fused kernel (CPU and CUDA): on the default model's weights several
        # times faster than PyTorch's multi-tensor default, same weights to 1e-6 (bench/optimizer_step.py).
        # Not under 16-mixed: its GradScaler unscales inside a fused step, which Lightning's gradient
        # clipping refuses.
        fused = self.trainer.precision not in ("16-mixed", "16") and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
        )
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, betas=tuple(hp.betas), fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches))  # optimizer steps, accumulation included
        scheduler = WarmupCosineLR(optimizer, total, hp.warmup_fraction, hp.min_lr_ratio, hp.resume_schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------- steps
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)

    def _loss_and_metrics(self, batch: dict[str, torch.Tensor], stage: str, accuracy: bool = True) -> torch.Tensor:
        """Mean cross-entropy over the batch's target tokens. Updates ``{stage}_loss``, and ``{stage}_acc`` when
        ``accuracy`` (an argmax over the target positions' logits: training takes it on logged steps only)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # Position t predicts token t+1. Shifting the labels, not the logits, keeps the logits one contiguous
        # tensor: flattening a (B, T-1, V) slice of them would copy it.
        targets = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
        mask = targets != IGNORE_INDEX
        if self._plain_head:
            # The LM head, its cross-entropy and their backward only where there is a target: prompts and padding
            # are 59 % of the default recipe's positions, and the head there was ~15 % of a bf16 step.
            hidden = (self._compiled_forward or self.model.base_model)(**inputs).last_hidden_state  # (B, T, E)
            logits = self.model.get_output_embeddings()(hidden[mask])  # (N, V), N target tokens
            targets = targets[mask]
        else:
            logits = (self._compiled_forward or self.model)(**inputs).logits.flatten(0, 1)  # (B * T, V)
            targets = targets.flatten()
        n_tokens = mask.sum()
        if logits.dtype != torch.float32 and not torch.is_autocast_enabled(logits.device.type):
            logits = logits.float()  # bf16-true: a sum over thousands of tokens wants fp32
        # Under autocast (bf16-mixed) cross_entropy takes bf16 logits and computes in fp32 itself: no copy here.
        # Sum over target tokens / count: every target token weighs the same, however the batch is padded.
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum") / n_tokens.clamp(min=1)
        weight = n_tokens.clamp(min=1).float()
        self.metrics[f"{stage}_loss"].update(loss.detach(), weight)
        if accuracy:
            correct = ((logits.detach().argmax(-1) == targets) & (targets != IGNORE_INDEX)).sum()
            self.metrics[f"{stage}_acc"].update(correct.float() / weight, weight)
        if stage == "train":
            self._batch_tokens = int(n_tokens)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # train/acc samples the logged steps (batch 0 of each epoch among them): its argmax over (B, T, V)
        # cost 2-2.4 % of every step of the default recipe.
        loss = self._loss_and_metrics(batch, "train", accuracy=batch_idx % max(1, self.trainer.log_every_n_steps) == 0)
        self.log("train/loss_step", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None  # the first batch of an epoch includes loader start-up: not timed

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:
            rate = self._batch_tokens / (now - self._last_batch_end)  # wall time between batch ends
            self.log("train/target_tokens_per_s", rate, on_step=True, on_epoch=True, prog_bar=True)
        self._last_batch_end = now

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._loss_and_metrics(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._loss_and_metrics(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        loss_metric, acc_metric = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        if loss_metric.update_count == 0:
            return
        loss = loss_metric.compute()
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/ppl": torch.exp(loss), f"{stage}/acc": acc_metric.compute()},
            prog_bar=stage == "val", sync_dist=False,  # MeanMetric already reduces across processes
        )
        loss_metric.reset()
        acc_metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ---------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation: Generation | None = None,
        seeds: Sequence[int] | None = None, stop_after_code_block: bool = False,
    ) -> list[list[str]]:
        """Completions for left-padded prompts ``(B, T)``, with ``generation`` or the model's own settings.

        Returns, per prompt, ``num_return_sequences`` completions (best first for beam search): the
        generated text only, prompt stripped, cut at the first EOS.

        Sampling without beams draws with :class:`~cai_lightning.generation.TopKTopPSampler` (temperature,
        ``top_p`` and the model's generation-config ``top_k``: the distribution ``generate(do_sample=True)``
        draws from); with ``seeds``, one per prompt, each prompt's samples come from a generator of its own, so
        they do not depend on the other prompts of the batch (up to the rounding that padding brings to the
        logits). ``stop_after_code_block`` (greedy or sampling) ends a sequence once it holds a closed fenced
        Python block (:class:`~cai_lightning.generation.FencedBlockEnd`): for callers that score that block only.

        Greedy decoding and sampling run :func:`~cai_lightning.generation.decode` (each sample from a generator
        of its own, seeded from its prompt's seed, or from the global generator without ``seeds``; sequences
        that have ended leave the batch), or transformers' ``generate`` for a model ``decode`` cannot run or
        with ``no_repeat_ngram_size``.
        """
        g = generation or self.generation
        prompt_len = input_ids.size(1)
        new_tokens = g.max_new_tokens if g.max_new_tokens is not None else g.max_length - prompt_len
        positions = context_length(self.model.config)
        if positions is not None:  # the position table (or RoPE's trained range) bounds prompt + completion
            new_tokens = min(new_tokens, positions - prompt_len)
        n = g.num_return_sequences
        if new_tokens < 1:
            return [[""] * n for _ in range(input_ids.size(0))]
        settings = dict(
            max_new_tokens=new_tokens,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if g.num_beams > 1:  # beam search (beam sampling with do_sample): transformers' own
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, num_beams=g.num_beams, num_return_sequences=n,
                length_penalty=g.length_penalty, early_stopping=g.early_stopping, do_sample=g.do_sample,
                **({"temperature": g.temperature, "top_p": g.top_p} if g.do_sample else {}), **settings,
            )  # (B * n, T + new)
            return decode_completions(self.tokenizer, out[:, prompt_len:].tolist(), n)
        top_k = self.model.generation_config.top_k or 0
        if not g.no_repeat_ngram_size and self._decodes:
            real = attention_mask.bool().cpu()
            prompts = [row[keep].tolist() for row, keep in zip(input_ids.cpu(), real)]
            if g.do_sample and seeds is None:  # seed_everything still decides what is drawn
                seeds = torch.randint(0, 1 << 62, (len(prompts),)).tolist()
            generated = decode(
                self.model, prompts, max_new_tokens=new_tokens, n=n, eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id, sampler=TopKTopPSampler(g.temperature, top_k, g.top_p) if g.do_sample else None,
                seeds=seeds, stop=FencedBlockEnd(self.tokenizer, 0) if stop_after_code_block else None,
            )
            return decode_completions(self.tokenizer, generated, n)
        processors = []
        if g.do_sample:  # drawn by the sampler, whose pick greedy decoding then takes
            draws = generators(seeds) if seeds is not None else None
            processors.append(TopKTopPSampler(g.temperature, top_k, g.top_p, draws, rows_per_generator=n))
        stops = [FencedBlockEnd(self.tokenizer, prompt_len)] if stop_after_code_block else []
        out = self.model.generate(
            input_ids=input_ids.repeat_interleave(n, dim=0), attention_mask=attention_mask.repeat_interleave(n, dim=0),
            num_beams=1, do_sample=False, top_k=None, top_p=None, temperature=None,
            logits_processor=LogitsProcessorList(processors), stopping_criteria=StoppingCriteriaList(stops), **settings,
        )  # (B * n, T + new)
        return decode_completions(self.tokenizer, out[:, prompt_len:].tolist(), n)

    def complete(
        self, prompts: list[str], generation: Generation | None = None, seeds: Sequence[int] | None = None,
        stop_after_code_block: bool = False,
    ) -> list[list[str]]:
        """Completions for prompt texts (already formatted with the template); see :meth:`generate`."""
        encoded = [{"input_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        batch = PadCollator(self.tokenizer.pad_token_id)(encoded)  # left-padded: no labels
        return self.generate(
            batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device), generation, seeds,
            stop_after_code_block,
        )

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict]:
        completions = self.generate(batch["input_ids"], batch["attention_mask"])
        prompts = self.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        return [{"prompt": p, "completions": c} for p, c in zip(prompts, completions)]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warmup to 1, then cosine decay to ``min_ratio``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


class WarmupCosineLR(torch.optim.lr_scheduler.LambdaLR):
    """:func:`warmup_cosine` over the optimizer steps ``[start_step, total_steps)``, resumable for a longer run.

    Args:
        optimizer: Its ``lr`` per parameter group is the peak.
        total_steps: The step the cosine reaches the floor at (this run's ``estimated_stepping_batches``).
        warmup_fraction: Share of the schedule's steps spent warming up linearly.
        min_ratio: The floor, as a fraction of the peak.
        resume: What a checkpoint restored into a run with more steps than it was planned for does:
            ``restart`` starts a new warmup + cosine at the resumed step, ending at this run's
            ``total_steps`` (a warm restart, as in SGDR); ``continue`` keeps the checkpoint's schedule.

    The checkpoint stores ``start_step`` and ``total_steps`` with the step count (a scheduler's state is its
    attributes); :meth:`load_state_dict` takes only those from it: the peak, warmup fraction, floor and
    ``resume`` stay this run's, as configured. A checkpoint saved before this class records no schedule and
    follows this run's from step 0.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float, min_ratio: float,
        resume: Literal["restart", "continue"] = "restart",
    ) -> None:
        self.start_step, self.total_steps = 0, total_steps
        self.warmup_fraction, self.min_ratio, self.resume = warmup_fraction, min_ratio, resume
        # a function, not a bound method: LambdaLR's state would try to save a callable object's attributes
        super().__init__(optimizer, lambda step: self.multiplier(step))

    def multiplier(self, step: int) -> float:
        """The LR at optimizer step ``step``, as a fraction of the peak."""
        span = max(1, self.total_steps - self.start_step)
        return warmup_cosine(span, math.ceil(self.warmup_fraction * span), self.min_ratio)(step - self.start_step)

    def load_state_dict(self, state_dict: dict) -> None:
        plan = {name: getattr(self, name) for name in ("base_lrs", "warmup_fraction", "min_ratio", "resume")}
        total = self.total_steps
        super().load_state_dict(state_dict)  # last_epoch (the step count), start_step, total_steps
        self.__dict__.update(plan)
        if self.resume == "restart" and total > self.total_steps:
            self.start_step, self.total_steps = self.last_epoch, total
        # The optimizer's state brought back the LR the checkpoint stopped at; the step about to run takes
        # the schedule's (they differ after a restart, or a changed model.learning_rate).
        self._last_lr = [base * self.multiplier(self.last_epoch) for base in self.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
