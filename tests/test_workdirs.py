"""Work dirs of sandboxed runs: named after their owner, deleted whatever a program built in them (as root
and as an unprivileged user), and swept only once their owner is dead."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import pytest
from unprivileged import NOBODY, run_python, why_not_as_nobody

from cai_lightning.sandbox import workdirs
from cai_lightning.sandbox.workdirs import (
    make_workdir,
    remove_tree,
    start_time,
    sweep_stale,
)

AS_NOBODY = pytest.mark.skipif(why_not_as_nobody() is not None, reason=str(why_not_as_nobody()))
DEPTH = 5000  # ~10,000 characters of path (over PATH_MAX), and more levels than RLIMIT_NOFILE's 1024 fds


def build_tree(path: str, outside: str) -> None:
    """What a hostile program can leave in its work dir ``path``: nesting ``DEPTH`` deep, ``chmod 000``
    directories and files, a fifo, a socket, symlinks to ``outside`` (which must survive), and, as root,
    files of another uid."""
    fd = os.open(path, os.O_DIRECTORY)
    for _ in range(DEPTH):  # by descriptor: the path soon exceeds PATH_MAX
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.mkfifo("fifo", dir_fd=fd)
    os.close(fd)
    os.makedirs(f"{path}/keep/inner")
    Path(f"{path}/keep/inner/file").write_text("x")
    os.chmod(f"{path}/keep/inner/file", 0)
    os.chmod(f"{path}/keep/inner", 0)
    os.chmod(f"{path}/keep", 0)
    os.mkfifo(f"{path}/fifo")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(f"{path}/socket")
    os.symlink(outside, f"{path}/outside-dir")
    os.symlink(f"{outside}/file", f"{path}/outside-file")
    if os.geteuid() == 0:
        Path(f"{path}/theirs").mkdir(mode=0)
        os.chown(f"{path}/theirs", 12345, 12345)


def make_outside(directory: Path) -> Path:
    outside = directory / "outside"
    outside.mkdir()
    (outside / "file").write_text("keep me")
    return outside


def test_make_workdir_names_its_owner_and_is_private(tmp_path, monkeypatch):
    monkeypatch.setattr(workdirs.tempfile, "tempdir", str(tmp_path))
    first, second = make_workdir(), make_workdir()
    assert first != second and os.path.dirname(first) == str(tmp_path) == os.path.realpath(tmp_path)
    assert os.path.basename(first).startswith(f"cai-sandbox-{os.getpid()}-{start_time(os.getpid())}-")
    assert os.stat(first).st_mode & 0o777 == 0o700 and os.listdir(first) == []
    remove_tree(first)
    assert not os.path.exists(first)


def test_remove_tree_takes_a_missing_path_and_unlinks_a_symlink_without_following_it(tmp_path):
    outside = make_outside(tmp_path)
    (tmp_path / "link").symlink_to(outside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_tree(str(tmp_path / "missing"))
        remove_tree(str(tmp_path / "link"))
    assert not os.path.lexists(tmp_path / "link") and (outside / "file").read_text() == "keep me"


def test_remove_tree_deletes_what_a_program_builds_as_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("runs as root; the unprivileged case is the test below")
    outside = make_outside(tmp_path)
    (tmp_path / "work").mkdir()
    build_tree(str(tmp_path / "work"), str(outside))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        remove_tree(str(tmp_path / "work"))
    assert not os.path.lexists(tmp_path / "work") and (outside / "file").read_text() == "keep me"


@AS_NOBODY
def test_remove_tree_deletes_what_a_program_builds_as_nobody():
    code = (
        "import json, os, tempfile, warnings\nfrom pathlib import Path\n"
        "from test_workdirs import build_tree, make_outside\nfrom cai_lightning.sandbox.workdirs import remove_tree\n"
        "warnings.simplefilter('error')\nhome = Path(tempfile.gettempdir())\noutside = make_outside(home)\n"
        "(home / 'work').mkdir()\nbuild_tree(str(home / 'work'), str(outside))\n"
        "built = os.stat(home / 'work/keep').st_mode & 0o777\nremove_tree(str(home / 'work'))\n"
        "print(json.dumps([os.getuid(), built, os.path.lexists(home / 'work'), (outside / 'file').read_text()]))"
    )
    done = run_python(code, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [NOBODY, 0, False, "keep me"]


@AS_NOBODY
def test_remove_tree_warns_and_does_not_raise_when_it_cannot_delete():
    theirs = Path(tempfile.mkdtemp(prefix="cai-root-owned-"))  # not under tmp_path: /tmp/pytest-of-root is 0700
    try:
        theirs.chmod(0o755)
        (theirs / "file").write_text("root's")
        code = (
            "import warnings\nfrom cai_lightning.sandbox.workdirs import remove_tree\n"
            "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
            f"    remove_tree({str(theirs)!r})\nprint([str(w.message) for w in caught if w.category is RuntimeWarning])"
        )
        done = run_python(code, timeout=30)
        assert done.returncode == 0, done.stderr
        assert f"could not delete the work dir {theirs}: " in done.stdout and "rm: cannot remove" in done.stdout
        assert (theirs / "file").read_text() == "root's"
    finally:
        remove_tree(str(theirs))


def test_sweep_removes_dead_owners_and_old_leftovers_and_keeps_live_owners(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    try:
        gone = subprocess.Popen(["true"])
        gone.wait()  # its pid names no process now
        names = {
            "mine": f"cai-sandbox-{os.getpid()}-{start_time(os.getpid())}-abc",
            "live": f"cai-sandbox-{live.pid}-{start_time(live.pid)}-abc",
            "dead": f"cai-sandbox-{gone.pid}-123-abc",
            "reused": f"cai-sandbox-{os.getpid()}-{start_time(os.getpid()) - 1}-abc",  # same pid, another process
            "old": "cai-sandbox-k2j4_x9q",
            "old-fresh": "cai-sandbox-a1b2c3d4",
            "unrelated": "cai-sandbox-notes",
        }
        for name in names.values():
            (tmp_path / name / "inner").mkdir(parents=True)
        (tmp_path / names["dead"] / "inner").chmod(0)
        an_hour_ago = time.time() - 3700
        os.utime(tmp_path / names["old"], (an_hour_ago, an_hour_ago))
        (tmp_path / "cai-sandbox-m5n6o7p8").write_text("a file, not a work dir")
        os.utime(tmp_path / "cai-sandbox-m5n6o7p8", (an_hour_ago, an_hour_ago))

        assert sweep_stale(str(tmp_path)) == 3
        kept = {"mine", "live", "old-fresh", "unrelated"}
        assert sorted(os.listdir(tmp_path)) == sorted([names[k] for k in kept] + ["cai-sandbox-m5n6o7p8"])
    finally:
        live.kill()
        live.wait()
    assert sweep_stale(str(tmp_path / "missing")) == 0
