"""FSDP (``--trainer.strategy fsdp``) on 2 CPU processes (gloo): fit, checkpoint, resume, export, test, predict.

Lightning's FSDP strategy runs on CUDA only, so the runs use :class:`CPUFSDPStrategy`, Lightning's strategy
with the two CPU gaps bridged (nothing else changed): whatever runs through it runs through Lightning's and
torch's FSDP code as on GPUs, collectives included. Each run is ``python -m cai_lightning`` in subprocesses
under ``timeout`` (:func:`test_ddp._run`), so a rank that waits for a collective the others never call fails
the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp._flat_param import FlatParamHandle

from conftest import TINY, make_rows, write_jsonl
from test_ddp import _config, _newest, _run

_to_cpu = FlatParamHandle.to_cpu


def _to_cpu_unless_there(self: FlatParamHandle):
    """torch's FSDP1 ``offload_to_cpu`` (Lightning's full checkpoints use it) copies the gathered weights to the
    CPU, then frees them on the compute device: on a CPU both are one storage, freed while in use (a
    segfault). Already on the CPU, there is nothing to move."""
    return contextlib.nullcontext() if self.device.type == "cpu" else _to_cpu(self)


FlatParamHandle.to_cpu = _to_cpu_unless_there  # in every rank: each imports this module for the strategy


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP strategy on CPU processes. Lightning refuses ``strategy="fsdp"`` without CUDA (a
    subclass passes its check) and gives torch no device for CPU ranks, for which torch's FSDP then looks for an
    accelerator: the module is wrapped here with ``device_id=cpu`` (Lightning leaves an FSDP-wrapped one as is)."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
        )
        return super()._setup_model(model)


def _config_with_3_tasks(folder: Path) -> Path:
    """test_ddp's short config, its ExecutionEval cut to 3 tasks: shares of 2 and 1 on 2 ranks."""
    path = _config(folder)
    config = yaml.safe_load(path.read_text())
    [evaluation] = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ExecutionEval")]
    evaluation["init_args"]["limit"] = 3
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fsdp(state_dict_type: str) -> list[str]:
    strategy = {"class_path": f"{__name__}.CPUFSDPStrategy", "init_args": {"state_dict_type": state_dict_type}}
    return ["--trainer.accelerator=cpu", "--trainer.devices=2", f"--trainer.strategy={json.dumps(strategy)}"]


@pytest.mark.slow
def test_fit_resume_export_and_test_under_fsdp_on_two_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the ranks import CPUFSDPStrategy from here
    write_jsonl(tmp_path / "rows.jsonl", make_rows(60))
    common = [
        "--config", str(_config_with_3_tasks(tmp_path)), *TINY, "--data.source=rows.jsonl", "--data.cache_dir=cache",
        "--data.constitution=null", "--data.batch_size=2", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", "--trainer.gradient_clip_val=1.0",  # by norm: FSDP's own clip_grad_norm_
    ]
    runs = tmp_path / "lightning_logs" / "default"

    # fit: the samples after validation (every rank generates), a full checkpoint, the export (gathered)
    out = _run(tmp_path, "fit", *common, *_fsdp("full"), "--trainer.max_epochs=1")
    assert out.count("[samples @ step 2]") == 1  # generated on both ranks, printed by rank 0
    [run] = list(runs.iterdir())
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2 and {"hf_config", "tokenizer_files", "tokenizer_fingerprint"} <= set(checkpoint)
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "hf_model").state_dict()
    saved = {name.removeprefix("model."): t for name, t in checkpoint["state_dict"].items() if name.startswith("model.")}
    assert exported.keys() == saved.keys()  # the whole network, not one rank's shard
    assert all(torch.equal(exported[name], saved[name]) for name in saved)  # the trained weights
    wte = exported["transformer.wte.weight"]

    # resume from the full checkpoint (optimizer state too) for one more epoch, saving sharded: last.ckpt a folder
    _run(tmp_path, "fit", *common, *_fsdp("sharded"), "--trainer.max_epochs=2", "--ckpt_path=last")
    assert last.is_dir() and (last / "meta.pt").is_file()
    resumed = torch.load(last / "meta.pt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 4
    exported_again = AutoModelForCausalLM.from_pretrained(run / "hf_model").state_dict()
    assert not torch.equal(exported_again["transformer.wte.weight"], wte)  # trained on, exported again

    # test from the sharded checkpoint: 3 tasks on 2 ranks, the smaller share padded so both generate in lockstep
    out = _run(tmp_path, "test", *common, *_fsdp("sharded"), "--ckpt_path=last")
    assert out.count("Execution-based evaluation on tasks (3 tasks)") == 1
    samples = [json.loads(line) for line in _newest(runs, "execution_tasks.jsonl").read_text().splitlines()]
    assert [s["sample"] for s in samples] == [0, 1] * 3  # 2 samples for each of 3 tasks, the padding dropped
    assert len({s["task_id"] for s in samples}) == 3

    # predict 5 prompts on 2 ranks in batches of 2: Lightning's sharding would give 3 and 2 prompts (2 batches and
    # 1, a hang in lockstep generation); the data module evens them to 3 and 3, the writer keeps each prompt once
    _run(tmp_path, "predict", *common, *_fsdp("sharded"), "--ckpt_path=last", "--data.predict_limit=5", timeout_s=120)
    [predictions] = list(runs.glob("*/predictions*.jsonl"))
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    import datasets

    [cached] = list((tmp_path / "cache").glob("*/dataset"))
    assert [item["prompt"] for item in lines] == datasets.load_from_disk(str(cached))["test"]["prompt"][:5]
