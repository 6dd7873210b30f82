"""The one cache root: a folder given, else $CAI_LIGHTNING_CACHE, else ~/.cache/cai_lightning."""

from pathlib import Path

from cai_lightning.cache import cache_root, models_dir
from cai_lightning.data.datamodule import CodeInstructionDataModule


def test_cache_root_is_the_folder_given_else_the_environment_else_the_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("CAI_LIGHTNING_CACHE", raising=False)
    assert cache_root() == Path.home() / ".cache" / "cai_lightning"
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" and models_dir() == tmp_path / "env" / "models"
    assert cache_root("~/elsewhere") == Path.home() / "elsewhere"


def test_the_datamodule_caches_under_the_root_unless_given_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_LIGHTNING_CACHE", str(tmp_path / "env"))
    assert CodeInstructionDataModule().cache_root == tmp_path / "env"
    assert CodeInstructionDataModule(cache_dir=str(tmp_path / "data")).cache_root == tmp_path / "data"
