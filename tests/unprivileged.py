"""Run Python code in a fresh interpreter, as ``nobody`` or as this process's user, from tests that run as
root (CI does): the sandbox must hold for both kinds of caller, and it takes different routes for each.

The child is this venv's interpreter with the project and this tests folder importable, HOME and TMPDIR
a fresh directory of its own (0700, owned by the user it runs as; deleted afterwards), a minimal
environment, and a hard time limit (``timeout -k``). As ``nobody`` (uid and gid 65534, no groups, no
inheritable capabilities, via util-linux ``setpriv``) it runs in a private mount namespace (``unshare``)
in which each directory that others cannot enter on the way to the interpreter, the venv or the project
(``/root``, when Python comes from ``/root/.pyenv``) is covered by a tmpfs holding only those paths,
bound back. Nothing of that reaches the host's mounts.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cai_lightning
from cai_lightning.sandbox.workdirs import remove_tree

NOBODY = 65534  # the kernel's overflow uid and gid, "nobody" / "nogroup" on Debian
KILL_AFTER_S = 5  # after the time limit's SIGTERM, SIGKILL this much later
PROJECT = Path(cai_lightning.__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
_TOOLS = ("timeout", "unshare", "setpriv", "mount")


def why_not_as_nobody() -> str | None:
    """Why :func:`run_python` cannot run code as ``nobody`` here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "needs root to switch to nobody (this process is already unprivileged)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (util-linux, coreutils)" if missing else None


def run_python(code: str, timeout: float, *, as_nobody: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -B -c code`` as ``nobody``, or (``as_nobody=False``) as this process's user, as the
    module docstring says; stdout and stderr captured as text. Exit status 124 or 137: it ran past
    ``timeout`` seconds and was killed."""
    base = Path(tempfile.mkdtemp(prefix="cai-run-as-"))
    try:
        base.chmod(0o755)  # others may enter: nobody's HOME lies inside
        home = base / "home"
        home.mkdir(mode=0o700)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home), "TMPDIR": str(home),
            "PYTHONPATH": f"{PROJECT}{os.pathsep}{TESTS}",
        }
        command = [sys.executable, "-B", "-c", code]
        if as_nobody:
            os.chown(home, NOBODY, NOBODY)
            command = nobody_argv(command, base / "stage")
        return subprocess.run(["timeout", "-k", str(KILL_AFTER_S), str(timeout), *command], check=False,
                              env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    finally:
        remove_tree(str(base))


def nobody_argv(argv: list[str], stage: Path) -> list[str]:
    """``argv`` run as ``nobody`` in a private mount namespace where this venv's interpreter, the project
    and this tests folder are reachable (see the module docstring). ``stage``: a path for the bind mounts
    to pass through (made if missing; the caller deletes it)."""
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all"]
    script = _uncover_script([sys.base_prefix, sys.prefix, PROJECT, TESTS], stage)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *drop, *argv]


def _uncover_script(paths: list, stage: Path) -> str:
    """Shell commands, run as root in the private mount namespace, that make ``paths`` reachable for any
    user: each outermost directory on the way that others cannot enter gets a tmpfs (mode 755) over it,
    with the paths under it bind-mounted back (through ``stage``, as the tmpfs hides them); then exec "$@"."""
    needed = sorted({os.path.realpath(p) for p in paths})
    needed = [p for p in needed if not any(p.startswith(q + "/") for q in needed)]
    blocked: dict[str, list[str]] = {}
    for path in needed:
        ancestors = [os.path.dirname(path)]
        while ancestors[-1] != "/":
            ancestors.append(os.path.dirname(ancestors[-1]))
        closed = [a for a in reversed(ancestors) if not os.stat(a).st_mode & 0o001]
        if closed:
            blocked.setdefault(closed[0], []).append(path)
    lines = ["set -e", "umask 022"]
    for i, (ancestor, inner) in enumerate(blocked.items()):
        staged = [shlex.quote(str(stage / f"{i}-{j}")) for j in range(len(inner))]
        for path, place in zip(inner, staged):
            lines += [f"mkdir -p {place}", f"mount --rbind {shlex.quote(path)} {place}"]
        lines.append(f"mount -t tmpfs -o mode=755,size=1m tmpfs {shlex.quote(ancestor)}")
        for path, place in zip(inner, staged):
            lines += [f"mkdir -p {shlex.quote(path)}", f"mount --move {place} {shlex.quote(path)}"]
    return "\n".join([*lines, 'exec "$@"'])
