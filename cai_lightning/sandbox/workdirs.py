"""Work dirs of sandboxed runs, on the evaluator's side: made with their owner's identity in the name,
deleted whatever the program built in them, and swept once their owner has died.

A work dir is ``<temp dir>/cai-sandbox-<pid>-<start>-<random>``: the evaluator's pid and its start time
(``/proc/<pid>/stat`` field 22, clock ticks since boot), so a later evaluator can tell a live owner's dir
from a killed one's even after the pid was reused. Work dirs of older versions (``cai-sandbox-`` and 8
random characters) carry no owner and are swept once an hour old.

Deleting uses coreutils' ``rm -rf --one-file-system`` (after ``chmod -R u+rwx`` when not root), which
handles any tree a program can build: nesting deeper than PATH_MAX and than RLIMIT_NOFILE (fts walks with
``openat``), ``chmod 000`` directories, fifos and sockets (never opened), symlinks (never followed),
files of other uids (as root); and never leaves the file system it starts on. The common case, an empty
dir, is one ``rmdir``.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import time
import warnings

PREFIX = "cai-sandbox-"
OLD_FORMAT_AGE_S = 3600  # a work dir without an owner in its name is swept once this old
_OWNED = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)-[a-z0-9_]+")
_OLD_FORMAT = re.compile(re.escape(PREFIX) + r"[a-z0-9_]{8}")  # tempfile.mkdtemp's random part
_TOOL_TIMEOUT_S = 300  # chmod / rm on the largest tree a program can write in its limits takes seconds


def make_workdir() -> str:
    """A fresh, empty, 0700 directory under ``tempfile.gettempdir()``, named after this process (see the
    module docstring); its real path (no symlink on the way)."""
    pid = os.getpid()
    return os.path.realpath(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{start_time(pid)}-"))


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything in it (see the module docstring). Never raises: warns with a
    RuntimeWarning when something is left. A symlink is removed, never followed; a missing path is fine."""
    try:
        if os.path.islink(path):
            os.unlink(path)
        else:
            os.rmdir(path)  # an empty dir, the common case: no subprocess
        return
    except FileNotFoundError:
        return
    except OSError:
        pass  # not empty, or not writable: the tools below
    problems = []
    commands = [["rm", "-rf", "--one-file-system", "--", path]]
    if os.geteuid() != 0:  # root is not stopped by a chmod 000 directory; anyone else must undo it first
        commands.insert(0, ["chmod", "-R", "u+rwx", "--", path])
    for command in commands:
        try:
            done = subprocess.run(command, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=_TOOL_TIMEOUT_S)
            if done.returncode != 0:
                problems += done.stderr.decode(errors="replace").strip().splitlines()[-1:]  # one line is enough
        except (OSError, subprocess.SubprocessError) as err:  # no such tool, or it hung
            problems.append(f"{command[0]}: {err}")
    if os.path.lexists(path):
        detail = "; ".join(problems) or "it is still there"
        warnings.warn(f"sandbox: could not delete the work dir {path}: {detail}", RuntimeWarning, stacklevel=2)


def sweep_stale(root: str | None = None) -> int:
    """Delete the work dirs under ``root`` (default ``tempfile.gettempdir()``) whose owner is no longer
    running, and old-format ones over an hour old; a live owner's dirs are never touched, nor (unless this
    process is root) another user's. Never raises. Returns how many dirs it deleted."""
    root = tempfile.gettempdir() if root is None else root
    removed = 0
    try:
        entries = [entry for entry in os.scandir(root) if entry.name.startswith(PREFIX)]
    except OSError:
        return 0
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or os.geteuid() not in (0, info.st_uid):
            continue
        owner = _OWNED.fullmatch(entry.name)
        if owner is not None:
            stale = start_time(int(owner[1])) != int(owner[2])
        else:
            stale = _OLD_FORMAT.fullmatch(entry.name) is not None and time.time() - info.st_mtime > OLD_FORMAT_AGE_S
        if stale:
            remove_tree(entry.path)
            removed += not os.path.lexists(entry.path)
    return removed


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22; the name (field 2) may hold spaces and parentheses, so count from its last ")".
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
