import ctypes
import ctypes.util
import platform

import pytest
import torch

from cai_lightning.devices import keep_freed_memory


class MallInfo2(ctypes.Structure):  # glibc >= 2.33, malloc.h
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_large_tensors_come_from_the_heap_and_stay_there_once_freed():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    assert keep_freed_memory()
    size = 64 * 2**20  # above glibc's largest default mmap threshold (32 MiB): mapped and unmapped by default
    mapped = libc.mallinfo2().hblkhd
    tensor = torch.empty(size, dtype=torch.uint8)
    assert libc.mallinfo2().hblkhd - mapped < size  # not a fresh mapping of its own
    heap = libc.mallinfo2().arena
    del tensor
    assert libc.mallinfo2().arena >= heap  # freed, the heap is not trimmed: the next step reuses its pages


def test_the_cli_keeps_freed_memory_where_glibc_allows(monkeypatch, capsys):
    from cai_lightning import devices
    from cai_lightning.cli import main

    monkeypatch.setattr(devices, "_freed_memory_kept", False)
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert devices.freed_memory_kept() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_benchmark_headers_name_a_preloaded_malloc_before_glibcs_settings(monkeypatch):
    from cai_lightning.devices import malloc_in_use

    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert malloc_in_use(True) == "malloc keeps freed memory (as the CLI)"
    assert malloc_in_use(False) == "malloc as glibc sets it"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert malloc_in_use(True) == "malloc preloaded: /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def test_one_precision_decision_for_training_and_generating(monkeypatch):
    from cai_lightning import devices

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for native in (False, True):
        monkeypatch.setattr(devices, "cpu_supports_bf16", lambda: native)
        assert devices.computes_in_bf16(cpu) is native and devices.computes_in_bf16(gpu)
        assert devices.inference_dtype(cpu) == (torch.bfloat16 if native else torch.float32)
        assert devices.training_precision("bf16-mixed", cpu) == ("bf16-mixed" if native else "32-true")
        assert devices.training_precision("bf16-mixed", gpu) == "bf16-mixed"
        assert devices.training_precision("32-true", cpu) == "32-true" == devices.training_precision("32-true", gpu)
