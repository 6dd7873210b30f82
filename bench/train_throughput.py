"""Training throughput: our ``fit`` against a plain PyTorch loop written the way the seed describes it.

Same model (the default config's GPT-2), same data (the default config's tokenized training split),
same number of optimizer steps, side by side in one run. The figure is *target tokens per second*:
tokens that carry a label, i.e. useful work, so padding does not count as throughput.

    python bench/train_throughput.py [--config configs/default.yaml] [--steps 30]

Rows:
  plain loop        every example padded to max_length, fp32, plain shuffled DataLoader, AdamW
  ours, 32-true     Lightning fit with dynamic padding + length-grouped batches, fp32
  ours, bf16-mixed  the same with bf16 autocast (what configs/default.yaml runs)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader

from cai_lightning.data.datamodule import CodeInstructionDataModule
from cai_lightning.data.tokenization import IGNORE_INDEX
from cai_lightning.model import CodeLM

ROOT = Path(__file__).resolve().parents[1]


def load_config(path: Path) -> tuple[dict, dict]:
    config = yaml.safe_load(path.read_text())
    model_args = {k: v for k, v in config["model"].items() if k != "generation"}
    return model_args, config["data"]


def build_module(model_args: dict, datamodule: CodeInstructionDataModule) -> CodeLM:
    torch.manual_seed(0)
    module = CodeLM(**model_args)
    module.connect(datamodule.tokenizer)
    module.configure_model()
    return module


def plain_loop(model_args: dict, datamodule: CodeInstructionDataModule, steps: int) -> tuple[int, float]:
    """The seed's way: pad everything to max_length, fp32, a plain DataLoader, HF's own loss."""
    max_length, pad = datamodule.hparams.max_length, datamodule.tokenizer.pad_token_id

    def pad_to_max(examples):
        ids = torch.full((len(examples), max_length), pad)
        labels = torch.full((len(examples), max_length), IGNORE_INDEX)
        for row, e in enumerate(examples):
            ids[row, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
        return {"input_ids": ids, "attention_mask": (ids != pad).long(), "labels": labels}

    data = datamodule.splits["train"].select_columns(["input_ids", "labels"])
    loader = DataLoader(data, batch_size=datamodule.hparams.batch_size, shuffle=True, collate_fn=pad_to_max)
    model = build_module(model_args, datamodule).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=model_args.get("learning_rate", 3e-4))
    tokens, done = 0, 0
    start = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            done += 1
            if done == steps:
                break
    return tokens, time.perf_counter() - start


class _Timer(pl.Callback):
    def __init__(self) -> None:
        self.tokens = 0
        self.start = self.seconds = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def our_fit(model_args: dict, datamodule: CodeInstructionDataModule, steps: int, precision: str) -> tuple[int, float]:
    timer = _Timer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=steps, limit_val_batches=0,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(build_module(model_args, datamodule), datamodule=datamodule)
    return timer.tokens, timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per setup")
    args = parser.parse_args()

    model_args, data_args = load_config(args.config)
    datamodule = CodeInstructionDataModule(**data_args)
    datamodule.prepare_data()
    datamodule.setup("fit")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} optimizer steps each, "
          f"batch {datamodule.hparams.batch_size}, max_length {datamodule.hparams.max_length}, "
          f"{len(datamodule.splits['train'])} training examples")

    rows = [("plain loop (pad to max, fp32)", *plain_loop(model_args, datamodule, args.steps))]
    rows.append(("ours, 32-true", *our_fit(model_args, datamodule, args.steps, "32-true")))
    rows.append(("ours, bf16-mixed", *our_fit(model_args, datamodule, args.steps, "bf16-mixed")))

    base = rows[0][1] / rows[0][2]
    print(f"\n{'setup':32s} {'target tokens':>14s} {'seconds':>9s} {'target tok/s':>13s} {'ratio':>7s}")
    for name, tokens, seconds in rows:
        rate = tokens / seconds
        print(f"{name:32s} {tokens:14d} {seconds:9.2f} {rate:13.0f} {rate / base:6.2f}x")


if __name__ == "__main__":
    main()
