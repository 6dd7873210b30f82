"""Run untrusted Python (code a model wrote) in a separate, locked-down process and report whether its
tests passed. Nothing here executes the program in the calling process.

Each :func:`run` starts a fresh interpreter, ``python -I -S`` (isolated mode: no ``PYTHON*`` variables, no
user site, no current directory on ``sys.path``; no site-packages either, so the program sees the standard
library only). A small harness (``_RUNNER``) sets up the layers below, runs the program, then the tests
in the same namespace, and reports on a pipe of its own. Linux only; :func:`isolation_report` says which
layers a child actually gets on this machine.

Layers, outermost first, and what each guarantees:

1. **Process.** A child of its own, in a new session, so at the wall-clock limit the whole process group
   gets SIGKILL; the parent always reaps it and closes every pipe. Environment: ``PATH``, ``LANG``, and
   ``HOME`` / ``TMPDIR`` pointing at the work dir; nothing else (no tokens, no ``HF_*``). Working
   directory: a fresh temporary directory, deleted afterwards.
2. **Namespaces** (as root with CAP_SYS_ADMIN, else in an unprivileged user namespace where the kernel
   allows one; otherwise absent, and reported so). A new network namespace (only a loopback that is down:
   no connection to anything, localhost included), a new IPC namespace, and a new mount namespace in
   which every mount is read-only except the work dir, ``/proc`` is an empty read-only tmpfs (no
   ``/proc/<ppid>/environ``, no ``/proc/self/mem``), and directories other users cannot enter (``/root``
   when the interpreter lives in ``/root/.pyenv``) are replaced by an empty tmpfs holding only the
   interpreter's standard library. Mount changes never reach the host: mounts are made private first,
   and nothing is mounted unless the namespace is verifiably new.
3. **User.** As root, the child switches to a uid of its own (``SANDBOX_UID_BASE`` + its pid, no groups,
   no capabilities, ``no_new_privs``) before the program runs, so it cannot signal or ptrace the parent
   or another sandbox, cannot read root-only files, and RLIMIT_NPROC applies (the kernel ignores it for
   root). It is skipped, and reported, when the standard library would not be readable for that uid or
   the uid is not mapped (a rootless container).
   Not root: capabilities are dropped inside the user namespace; the uid stays.
4. **Resource limits** (:class:`Limits`): RLIMIT_AS, RLIMIT_CPU (soft, then SIGKILL one second later),
   RLIMIT_FSIZE, RLIMIT_NPROC = 0 (no new processes or threads, for a non-root uid), RLIMIT_NOFILE = 64,
   RLIMIT_CORE = 0.
5. **Audit hook** (``sys.addaudithook`` in the child, before the program runs). Refuses sockets; process
   creation and signals (``os.system``, ``os.exec*``, ``os.fork``, ``os.posix_spawn``, ``subprocess``,
   ``os.kill``); ctypes; opening for writing, creating, deleting or changing files outside the work dir;
   symlinks and hard links; changing rlimits; and the introspection that reaches the harness
   (``sys._getframe``, the frames of tracebacks, generators and coroutines, ``gc.get_objects`` /
   ``get_referrers`` / ``get_referents``, ``sys.settrace`` / ``setprofile``, more audit hooks). Two
   calls that raise no audit event are stubbed out: ``_signal.signal`` and ``_posixsubprocess.fork_exec``.
   Python code cannot remove an audit hook, but this is defence in depth, not a boundary: a program that
   corrupts interpreter memory, or finds a route the hook does not see (re-creating ``_signal`` through
   importlib internals, say), gets past it. Layers 1-4 are enforced by the kernel and still hold.

**Verdict.** ``"passed"`` needs a report, on a pipe that is neither stdout nor stderr, carrying a random
nonce the parent made for this run, and the child's clean exit. The nonce and the code that writes the
report live only in the audit hook's closure (no module, global or ``__main__`` attribute holds them),
and the hook writes "passed" only when asked by the harness's own frame, the one that announced the
start before the program ran, which reaches that point only after the tests ran to completion. So
printing a fake report, writing one to every fd, calling ``sys.exit(0)`` or ``os._exit(0)`` before the
tests, raising ``BaseException`` subclasses, replacing ``builtins.AssertionError`` (``assert`` does not
look it up) or patching builtins (the tests get a pristine copy) does not produce a pass, and any data
on the report pipe that the hook did not write turns the result into an error. Residual risk: the
program and the harness share one interpreter, so a program that gets past the audit hook (see 5) can
forge a pass. It still cannot get past layers 1-4.

**Not guaranteed.** No seccomp filter: the kernel's syscall surface is reachable, and a kernel exploit
escapes all of this. The program can read world-readable files (the project's source, for one). Without
namespaces (layer 2) a program that gets past the audit hook can reach the network and write to
world-writable directories; without the uid switch, as root, RLIMIT_NPROC does nothing. The tests'
meaning is not checked: an object whose ``__eq__`` always returns True passes ``assert f(1) == 2``.

**Statuses.** ``passed``; ``failed`` (an ``AssertionError``); ``error`` (any other exception, with its
class name as ``error_type``: ``SyntaxError`` naming the program or the tests, ``SystemExit`` of any code,
``EarlyExit`` for a process that left without a report, ``SandboxTampering``, ``BadInput``,
``SandboxError``); ``timeout`` (the wall-clock limit); ``killed`` (a resource limit: ``MemoryError``, a
write over ``file_bytes`` (``OSError``), or a signal such as ``SIGXCPU``; a crash such as ``SIGSEGV`` is
reported the same way). Output beyond
``Limits.output_bytes`` is drained and dropped, not an error: the result keeps the first bytes and a
one-line note, and a program that prints forever ends at the wall-clock limit.

The program runs as module ``__sandbox__`` (also registered as ``__main__``), so an
``if __name__ == "__main__":`` demo block does not run, as when the program is imported.
"""

from __future__ import annotations

import hmac
import json
import marshal
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

STATUSES = ("passed", "failed", "error", "timeout", "killed")
MAX_SOURCE_CHARS = 1_000_000  # program or tests longer than this are not run
MESSAGE_CHARS = 500
# Sandbox uids are SANDBOX_UID_BASE + the child's pid, so concurrent children never share one. 0x70000000
# lies above the ranges systemd hands to containers and dynamic users (systemd's UIDS-GIDS.md).
SANDBOX_UID_BASE = 0x7000_0000
_REPORT_BYTES = 65_536  # a genuine report is under 2 KB; more means the program wrote to the pipe
_READ_CHUNK = 65_536
_EXIT_GRACE_S = 2.0  # after the child exits, how long to wait for its pipes to reach EOF
_POLL_S = 0.05  # how often to check for the child's exit when pidfd_open is unavailable


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run.

    Args:
        timeout_s: Wall clock for the whole child, startup included; then its process group is killed.
        cpu_s: CPU seconds (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later.
        memory_mb: Address space in MiB (RLIMIT_AS), the interpreter's ~20 MiB included; allocations
            beyond it raise MemoryError.
        output_bytes: Bytes of stdout, and of stderr, kept in the result; the rest is read and dropped.
        file_bytes: Largest file the program may write (RLIMIT_FSIZE); writing beyond it fails with
            "File too large" (Python ignores SIGXFSZ), which counts as ``"killed"``.
    """

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    output_bytes: int = 16_384
    file_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "output_bytes", "file_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.memory_mb < 64:  # the interpreter and the harness need about 20 MiB before the program runs
            raise ValueError(f"Limits.memory_mb must be at least 64, got {self.memory_mb!r}")


@dataclass(frozen=True)
class Result:
    """How one sandboxed run ended.

    ``status`` is one of :data:`STATUSES` (see the module docstring); ``error_type`` names the exception
    class or signal, None for a pass or a timeout; ``message`` is a short detail (at most
    ``MESSAGE_CHARS``) with the failing line where known; ``stdout`` / ``stderr`` hold at most
    ``Limits.output_bytes`` bytes each, decoded as UTF-8, plus a note when more was dropped.
    ``tests_line`` is the line (1-based) of the tests whose top-level statement was running when the run
    failed, from the harness's report: 0 when it passed or the failure did not come from the tests (the
    program's own top level, a timeout, a resource limit, tampering). Callers that hide some tests map it
    to a statement rather than parse ``message``, which carries the exception's text.
    """

    status: str
    error_type: str | None
    message: str
    stdout: str
    stderr: str
    duration_s: float
    tests_line: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run(program: str, tests: str = "", *, limits: Limits = Limits(), audit_hook: bool = True) -> Result:
    """Run ``program``, then ``tests`` (assert statements) against it, in a fresh sandboxed process.

    Both are compiled separately (a SyntaxError names which one), then executed in one namespace. Never
    raises for bad input (not a str, null bytes, over ``MAX_SOURCE_CHARS`` characters): that is an
    ``"error"`` result with error_type ``"BadInput"``; a child that cannot be started is an ``"error"``
    with ``"SandboxError"``. ``audit_hook=False`` leaves out layer 5, to test the kernel's layers alone;
    never use it for untrusted code.
    """
    problem = _input_problem(program, tests)
    if problem is not None:
        return _error_result("BadInput", problem)
    return _execute(program, tests, limits, audit_hook)[0]


def run_many(
    jobs: Sequence[tuple[str, str]], *, limits: Limits = Limits(), workers: int | None = None
) -> list[Result]:
    """Run many ``(program, tests)`` pairs, at most ``workers`` children at once (default: one per CPU
    core). Results come back in input order; a job that is not a pair gives a ``"BadInput"`` result.
    Raises ValueError for ``workers < 1``."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"run_many: workers must be at least 1, got {workers}")
    jobs = list(jobs)
    if not jobs:
        return []

    def one(job: tuple[str, str]) -> Result:
        if not isinstance(job, (tuple, list)) or len(job) != 2:
            return _error_result("BadInput", f"a job must be a (program, tests) pair, got {type(job).__name__}")
        return run(job[0], job[1], limits=limits)

    # Threads only wait on pipes; the work happens in the children.
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, jobs))


@contextmanager
def quiet_syntax_warnings():
    """For parsing or compiling untrusted code in this process (never running it): silences the
    SyntaxWarning each invalid escape (``"\\e"``) in it raises at every parse since Python 3.12
    (a DeprecationWarning before), of which model-written code has plenty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def isolation_report(limits: Limits = Limits()) -> dict[str, str]:
    """Which isolation layers a child gets on this machine: layer name → ``"on: ..."`` or ``"off: why"``.

    Runs one empty program. Raises RuntimeError when even that does not pass (the sandbox is broken).
    """
    result, layers = _execute("", "", limits, audit_hook=True)
    if not result.passed or layers is None:
        raise RuntimeError(
            f"the sandbox could not run an empty program: {result.status} {result.error_type}: {result.message}"
        )
    return layers


# ----------------------------------------------------------------------------------------------------
# The harness, run by the child as `python -I -S -B -u - <config path> <report fd>` (source on stdin). It starts as
# the caller's user (root, here) to set up namespaces and limits, then drops privileges and runs the
# program. Kept to the standard library and free of anything the program could reach afterwards.

_RUNNER = r'''
import builtins, os, sys

# The harness's functions use a private copy of the builtins: the program can patch the builtins module.
__builtins__ = dict(builtins.__dict__)

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWIPC, CLONE_NEWNET = 0x20000, 0x10000000, 0x8000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
KEPT_MOUNT_FLAGS = {b"nosuid": 2, b"nodev": 4, b"noexec": 8, b"noatime": 1024, b"nodiratime": 2048, b"relatime": 1 << 21}
PR_SET_NO_NEW_PRIVS = 38
MESSAGE_CHARS = 500

# Audit events refused outright, and by prefix.
DENIED_EVENTS = frozenset({
    "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "os.symlink", "os.link",
    "os.startfile", "sys.addaudithook", "sys.settrace", "sys.setprofile", "sys._current_frames",
    "sys._current_exceptions", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "resource.setrlimit", "resource.prlimit", "setopencodehook",
})
DENIED_PREFIXES = ("socket.", "ctypes.")
DENIED_IMPORTS = frozenset({"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
# Events that change the file system: (positions of paths, positions of dir_fd arguments).
PATH_EVENTS = {
    "os.mkdir": ((0,), (2,)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
    "os.rename": ((0, 1), (2, 3)), "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)),
    "os.truncate": ((0,), ()), "os.utime": ((0,), (3,)), "os.setxattr": ((0,), ()),
    "os.removexattr": ((0,), ()), "os.chflags": ((0,), ()),
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def main(config_path, report_fd):
    import marshal  # built in: `json` would cost 12 ms of imports per run (it pulls in `re`)
    with open(config_path, "rb") as f:
        config = marshal.loads(f.read())
    os.unlink(config_path)
    layers = {}
    try:
        isolate(config, layers)
    except BaseException as exc:  # nothing untrusted has run yet: report directly
        message = ("sandbox setup failed: %s: %s" % (type(exc).__name__, exc))[:MESSAGE_CHARS]
        report = to_json({"nonce": config["nonce"], "status": "error", "error_type": "SandboxError", "message": message})
        report = report[:-1] + ', "layers": ' + to_json(layers) + "}\n"
        data = report.encode("ascii")
        while data:
            data = data[os.write(report_fd, data):]
        os._exit(0)
    layers["audit_hook"] = "on" if config["audit_hook"] else "off: disabled by the caller (testing only)"
    execute(config, report_fd, to_json(layers))


def to_json(mapping):
    """A flat str -> str mapping as a JSON object (ASCII), without the `json` package."""
    from _json import encode_basestring_ascii as encode
    return "{" + ", ".join("%s: %s" % (encode(k), encode(v)) for k, v in mapping.items()) + "}"


def isolate(config, layers):
    import ctypes, resource
    workdir = config["workdir"]
    os.chdir(workdir)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    root = os.geteuid() == 0
    uid = config["uid_base"] + os.getpid() if root else None
    if uid is not None and not (mapped("/proc/self/uid_map", uid) and mapped("/proc/self/gid_map", uid)):
        layers["user"] = "off: uid %d is not mapped in this user namespace" % uid
        uid = None
    library = interpreter_dirs()
    if enter_namespaces(libc, root, layers):
        confine_filesystem(libc, workdir, library + [workdir] if uid is not None else [], layers)
        os.chdir(workdir)  # the old cwd is on the mount now read-only; the path leads to the writable bind
    if uid is not None:
        blocked = [path for path in library if not readable_by_others(path)]
        if blocked:
            layers["user"] = "off: other users cannot read %s, which the program needs" % blocked[0]
            uid = None
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to non-root: every capability is cleared too
        layers["user"] = "on: uid %d, no groups, no capabilities" % uid
    else:
        drop_capabilities(ctypes, libc)
        layers.setdefault("user", "off: not root")
        layers["user"] += "; capabilities dropped, uid %d kept" % os.getuid()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    limits = config["limits"]
    for name, soft, hard in (
        ("RLIMIT_CORE", 0, 0),
        ("RLIMIT_CPU", limits["cpu_s"], limits["cpu_s"] + 1),
        ("RLIMIT_FSIZE", limits["file_bytes"], limits["file_bytes"]),
        ("RLIMIT_NOFILE", 64, 64),
        ("RLIMIT_NPROC", 0, 0),
        ("RLIMIT_AS", limits["memory_mb"] << 20, limits["memory_mb"] << 20),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))
    layers["rlimits"] = "on: AS %d MiB, CPU %d s, FSIZE %d B, NOFILE 64, CORE 0, NPROC 0%s" % (
        limits["memory_mb"], limits["cpu_s"], limits["file_bytes"],
        " (ignored: the child is root)" if os.getuid() == 0 else "")


def mapped(path, ident):
    with open(path) as f:
        for line in f:
            inside, _, count = (int(x) for x in line.split())
            if inside <= ident < inside + count:
                return True
    return False


def interpreter_dirs():
    """Directories the interpreter reads from after the switch (lazy imports), outermost only."""
    dirs = sorted({os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)})
    return [d for d in dirs if not any(d.startswith(o + "/") for o in dirs if o != d)]


def readable_by_others(path):
    parts = path.split("/")[1:]
    for i in range(len(parts)):
        if not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001:
            return False
    return os.stat(path).st_mode & 0o005 == 0o005


def enter_namespaces(libc, root, layers):
    """New network, IPC and mount namespaces; True when mounts may be changed safely (private ones)."""
    import ctypes
    before = os.stat("/proc/self/ns/mnt").st_ino
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC
    uid, gid = os.getuid(), os.getgid()
    if root and libc.unshare(flags) == 0:
        how = "as root"
    elif libc.unshare(CLONE_NEWUSER | flags) == 0:
        how = "in a user namespace"
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", "%d %d 1" % (uid, uid)),
                           ("/proc/self/gid_map", "%d %d 1" % (gid, gid))):
            with open(path, "w") as f:
                f.write(text)
    else:
        why = "off: unshare failed (%s)" % os.strerror(ctypes.get_errno())
        layers["network"] = layers["ipc"] = layers["filesystem"] = why
        return False
    layers["network"] = "on: new network namespace %s (loopback down)" % how
    layers["ipc"] = "on: new IPC namespace"
    # Never touch mounts unless they are verifiably ours and private: otherwise they would reach the host.
    if os.stat("/proc/self/ns/mnt").st_ino == before:
        layers["filesystem"] = "off: the mount namespace did not change"
        return False
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        layers["filesystem"] = "off: could not make mounts private (%s)" % os.strerror(ctypes.get_errno())
        return False
    return True


def confine_filesystem(libc, workdir, needed, layers):
    """Hide what the sandbox user may not enter (keeping `needed`), then make every mount read-only
    except the work dir, and replace /proc with an empty tmpfs."""
    import ctypes
    hidden = hide_unreachable(libc, needed)
    if libc.mount(workdir.encode(), workdir.encode(), None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), "bind-mounting the work dir")
    with open("/proc/self/mountinfo", "rb") as f:
        mounts = [line.split()[4:6] for line in f]
    failed = []
    for raw_point, options in mounts:
        point = unescape_mount_point(raw_point)
        if point == workdir.encode() or point == b"/proc" or point.startswith(b"/proc/"):
            continue
        kept = sum(KEPT_MOUNT_FLAGS.get(o, 0) for o in options.split(b","))
        if libc.mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept, None) != 0:
            if ctypes.get_errno() != 2:  # ENOENT: under a hidden directory, out of sight anyway
                failed.append(point.decode(errors="replace"))
    if libc.mount(b"tmpfs", b"/proc", b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=555") != 0:
        failed.append("/proc (not hidden)")
    status = "on" if not failed else "partly on (still writable: %s)" % ", ".join(failed)
    layers["filesystem"] = "%s: read-only except the work dir, /proc hidden%s" % (
        status, "; hidden: " + ", ".join(hidden) if hidden else "")


def unescape_mount_point(raw):
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal), so every backslash starts one."""
    head, *escaped = raw.split(b"\\")
    return head + b"".join(bytes([int(part[:3], 8)]) + part[3:] for part in escaped)


def hide_unreachable(libc, paths):
    """Replace each directory on the way to `paths` that others cannot enter (such as /root) with an
    empty tmpfs in which only `paths` are bind-mounted back. Returns the hidden directories."""
    import ctypes
    blocking = {}
    for path in paths:
        parts = path.split("/")[1:]
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                blocking.setdefault(ancestor, []).append(path)
                break
    for ancestor in sorted(blocking, key=len):  # an outer hidden directory takes in the inner ones
        for outer in blocking:
            if outer != ancestor and ancestor.startswith(outer + "/") and ancestor in blocking:
                blocking[outer] += blocking.pop(ancestor)
    old_umask = os.umask(0o022)
    try:
        for ancestor, inner in blocking.items():
            fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in inner]  # reachable after the tmpfs covers them
            if libc.mount(b"tmpfs", ancestor.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=755") != 0:
                raise OSError(ctypes.get_errno(), "mounting a tmpfs over " + ancestor)
            for path, fd in zip(inner, fds):
                os.makedirs(path, exist_ok=True)
                if libc.mount(b"/proc/self/fd/%d" % fd, path.encode(), None, MS_BIND | MS_REC, None) != 0:
                    raise OSError(ctypes.get_errno(), "bind-mounting " + path)
                os.close(fd)
    finally:
        os.umask(old_umask)
    return sorted(blocking)


def drop_capabilities(ctypes, libc):
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    empty = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} sets, all zero
    if libc.capset(ctypes.byref(Header(0x20080522, 0)), empty) != 0:  # _LINUX_CAPABILITY_VERSION_3
        raise OSError(ctypes.get_errno(), "capset")


def execute(config, report_fd, layers_json):
    import types
    program, tests, enforce = config["program"], config["tests"], config["audit_hook"]
    pristine = dict(builtins.__dict__)
    module = types.ModuleType("__sandbox__")
    namespace = module.__dict__
    namespace["__builtins__"] = dict(pristine)
    sys.modules["__main__"] = sys.modules["__sandbox__"] = module
    sys.argv = ["__sandbox__"]
    if enforce:
        restrict_modules(types)
    # Popped: main()'s frame still holds `config`, and the nonce must live in the hook's closure only.
    install_guard(config.pop("nonce"), report_fd, config["workdir"], layers_json, enforce)
    del config
    # What runs after the program is bound now: it may replace attributes of sys and os.
    audit, exit_now, show_traceback = sys.audit, os._exit, sys.__excepthook__
    sources = {"program": program, "tests": tests}
    reserve = bytearray(1 << 20)  # freed on failure, so that reporting a MemoryError has room
    audit("cai_sandbox.start")
    phase = "program"
    try:
        program_code = compile(program, "<program>", "exec", dont_inherit=True)
        phase = "tests"
        tests_code = compile(tests, "<tests>", "exec", dont_inherit=True)
        phase = "program"
        exec(program_code, namespace)
        phase = "tests"
        namespace["__builtins__"] = dict(pristine)  # the tests see the builtins as they were
        exec(tests_code, namespace)
    except BaseException as exc:
        del reserve
        status, error_type, message, tests_line = describe(exc, phase, sources)
        try:  # for a human reading stderr; written by C code, which reads no audited attribute
            show_traceback(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass
        audit("cai_sandbox.report", status, error_type, message, tests_line)
    else:
        audit("cai_sandbox.report", "passed", "", "", 0)
    exit_now(0)


def describe(exc, phase, sources):
    """(status, error_type, message, tests_line) for an exception; robust to exceptions the program
    defined. tests_line: the line of the tests' top-level code that was running (the outermost frame of
    the tests' source), or 0 when the exception did not come from the tests."""
    cls = type(exc)
    status = "failed" if issubclass(cls, AssertionError) else "killed" if issubclass(cls, MemoryError) else "error"
    try:
        if issubclass(cls, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE (Python ignores SIGXFSZ)
            status = "killed"
    except BaseException:
        pass
    try:
        error_type = "".join((cls.__name__,))
    except BaseException:
        error_type = "UnknownException"
    try:
        if issubclass(cls, SystemExit):
            detail = "exit(%r) in the %s, before the tests finished" % (exc.code, phase)
        elif issubclass(cls, SyntaxError) and exc.filename in ("<program>", "<tests>"):
            detail = "".join((str(exc.msg),))
        else:
            detail = "".join((str(exc),)) or ("assertion failed" if status == "failed" else error_type)
    except BaseException:
        detail = error_type
    tests_line = 0
    try:
        if issubclass(cls, SyntaxError) and exc.filename in ("<program>", "<tests>"):
            line = exc.lineno
        else:
            tb = exc.__traceback__  # this harness's frame, then the top-level code of the phase
            line = tb.tb_next.tb_lineno if tb is not None and tb.tb_next is not None else None
        lines = sources[phase].splitlines()
        if type(line) is int and 1 <= line <= len(lines):
            detail += " (%s line %d: %s)" % (phase, line, lines[line - 1].strip()[:200])
            if phase == "tests":
                tests_line = line
        elif issubclass(cls, SyntaxError):
            detail += " (in the %s)" % phase
    except BaseException:
        pass
    return status, error_type, detail[:MESSAGE_CHARS], tests_line


def restrict_modules(types):
    """Take ctypes out of reach, and stub the two calls that raise no audit event."""
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]
    import _posixsubprocess, _signal

    def refusal(what):
        def refuse(*args, **kwargs):
            raise PermissionError("sandbox: %s is not allowed" % what)
        return refuse

    for real, names in ((_signal, ("signal", "set_wakeup_fd")), (_posixsubprocess, ("fork_exec",))):
        stub = types.ModuleType(real.__name__)
        stub.__dict__.update(real.__dict__)
        for name in names:
            setattr(stub, name, refusal("%s.%s" % (real.__name__, name)))
        sys.modules[real.__name__] = stub
    sys.modules.pop("signal", None)


def install_guard(nonce, report_fd, workdir, layers_json, enforce):
    """The audit hook: the only holder of the nonce and of the code that writes the report, and (when
    `enforce`) the refusals listed in the module docstring of cai_lightning.sandbox."""
    import _json
    encode, write, getframe, getcwd, fspath = _json.encode_basestring_ascii, os.write, sys._getframe, os.getcwd, os.fspath
    inside = workdir + "/"
    state = {"harness": None, "reported": False, "own_call": False}

    def send(status, error_type, message, tests_line=0):
        state["reported"] = True
        line = '{"nonce": %s, "status": %s, "error_type": %s, "message": %s, "tests_line": %d, "layers": %s}\n' % (
            encode(nonce), encode(status), encode(error_type), encode(message), tests_line, layers_json)
        data = line.encode("ascii")
        while data:
            data = data[write(report_fd, data):]

    def caller():
        """The frame that raised the current event (0 is this function, 1 the hook)."""
        state["own_call"] = True
        try:
            return getframe(2)
        finally:
            state["own_call"] = False

    def confined(path):
        if type(path) is int:  # an open file descriptor: no new file
            return True
        path = fspath(path)
        if isinstance(path, bytes):
            path = bytes.decode(path, "utf-8", "surrogateescape")
        path = "".join((path,))  # a plain str: a subclass's methods could lie
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                if parts:
                    parts.pop()
            elif part and part != ".":
                parts.append(part)
        path = "/" + "/".join(parts)
        return path == workdir or path.startswith(inside) or path == "/dev/null"

    def refuse(what):
        raise PermissionError("sandbox: %s is not allowed" % what)

    def hook(event, args):
        if event == "sys._getframe":
            if enforce and not state["own_call"]:
                raise ValueError("sandbox: sys._getframe is not allowed")  # callers treat it as "no frame"
            return
        if event == "cai_sandbox.start":
            frame = caller()
            if state["harness"] is None:  # the first start is the harness's, before the program runs
                state["harness"] = frame
            elif not state["reported"]:
                send("error", "SandboxTampering", "the program restarted the harness")
            return
        if event == "cai_sandbox.report":
            frame = caller()
            if state["reported"]:
                return
            if frame is state["harness"]:
                send(*args)
            else:
                send("error", "SandboxTampering", "the program tried to report a result itself")
            return
        if not enforce:
            return
        if event in DENIED_EVENTS or event.startswith(DENIED_PREFIXES):
            refuse(event)
        elif event == "object.__getattr__":
            if args[1] in FRAME_ATTRIBUTES:
                raise AttributeError("sandbox: reading %s is not allowed" % args[1])
        elif event == "import":
            if args[0] in DENIED_IMPORTS or args[0].startswith("ctypes."):
                raise ImportError("sandbox: importing %s is not allowed" % args[0])
        elif event == "open":
            path, mode, flags = args
            writing = (flags or 0) & WRITE_FLAGS or (type(mode) is str and any(c in mode for c in "wax+"))
            if writing and not confined(path):
                refuse("writing outside the work dir")
        elif event in PATH_EVENTS:
            paths, dir_fds = PATH_EVENTS[event]
            if any(args[i] not in (None, -1) for i in dir_fds) or not all(confined(args[i]) for i in paths):
                refuse(event + " outside the work dir")

    sys.addaudithook(hook)


main(sys.argv[1], int(sys.argv[2]))
'''
_RUNNER_SOURCE = _RUNNER.encode()


# ----------------------------------------------------------------------------------------------------
# The parent side.


def _input_problem(program: object, tests: object) -> str | None:
    """Why ``(program, tests)`` cannot be run, or None."""
    for name, value in (("program", program), ("tests", tests)):
        if not isinstance(value, str):
            return f"the {name} must be a str, got {type(value).__name__}"
        if "\x00" in value:
            return f"the {name} contains a null byte (at character {value.index(chr(0))}); Python source cannot"
        if len(value) > MAX_SOURCE_CHARS:
            return f"the {name} has {len(value):,} characters, more than the limit of {MAX_SOURCE_CHARS:,}"
    return None


def _error_result(error_type: str, message: str) -> Result:
    return Result("error", error_type, message[:MESSAGE_CHARS], "", "", 0.0)


class _Capture:
    """The first ``limit`` bytes of a stream, and how many it carried in all."""

    def __init__(self, limit: int) -> None:
        self.limit, self.data, self.total = limit, bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def text(self) -> str:
        text = self.data.decode("utf-8", "replace")
        if self.total > len(self.data):
            text += f"\n[{self.total - len(self.data):,} more bytes dropped: output is capped at {self.limit:,} bytes]"
        return text


def _execute(program: str, tests: str, limits: Limits, audit_hook: bool) -> tuple[Result, dict[str, str] | None]:
    """Run one job in a child; the result, and the layers the child reported (None without a report)."""
    nonce = secrets.token_hex(16)
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="cai-sandbox-"))
    try:
        config_path = os.path.join(workdir, ".sandbox-config")
        config = {
            "program": program, "tests": tests, "nonce": nonce, "workdir": workdir, "audit_hook": audit_hook,
            "uid_base": SANDBOX_UID_BASE,
            "limits": {"cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_bytes": limits.file_bytes},
        }
        with open(os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(marshal.dumps(config))  # read by the same interpreter; the harness cannot afford `json`
        report_r, report_w = os.pipe()
        try:
            start = time.monotonic()
            try:
                # The harness comes on stdin (`python -`), which the interpreter reads to the end before
                # running it: the program then finds stdin at EOF, and `ps` shows no 20 KB command line.
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-B", "-u", "-", config_path, str(report_w)], bufsize=0,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(report_w,), cwd=workdir, env=_child_env(workdir), start_new_session=True,
                )
            except OSError as err:
                return _error_result("SandboxError", f"could not start the sandbox process: {err}"), None
            finally:
                os.close(report_w)
            with proc:  # closes the pipes on the way out
                try:
                    _send_harness(proc)
                    stdout, stderr, report, timed_out = _collect(proc, report_r, limits, start)
                except BaseException:  # an interrupted parent must not wait on a child that runs on
                    _kill_group(proc.pid)
                    raise
                returncode = proc.wait()
            duration = time.monotonic() - start
        finally:
            os.close(report_r)
    finally:
        _remove_tree(workdir)
    parsed, tampered = _read_report(report, nonce)
    status, error_type, message, tests_line = _verdict(parsed, tampered, returncode, timed_out, limits)
    result = Result(status, error_type, message[:MESSAGE_CHARS], stdout.text(), stderr.text(), duration, tests_line)
    return result, (parsed or {}).get("layers")


def _send_harness(proc: subprocess.Popen) -> None:
    """Write the harness to the child's (unbuffered) stdin and close it; about 20 KB, so it fits in the
    pipe and never blocks. A child that died at startup breaks the pipe: its verdict says so."""
    data = memoryview(_RUNNER_SOURCE)
    try:
        while data:
            data = data[proc.stdin.write(data):]
    except BrokenPipeError:
        pass
    finally:
        proc.stdin.close()


def _child_env(workdir: str) -> dict[str, str]:
    """The child's whole environment: nothing of the caller's (tokens, HF_* and the like) gets through."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


def _collect(proc: subprocess.Popen, report_fd: int, limits: Limits, start: float) -> tuple[_Capture, _Capture, _Capture, bool]:
    """Drain stdout, stderr and the report pipe until the child has exited and they are closed, killing
    the process group at the wall-clock limit. Returns the three captures and whether it timed out.

    The child is not reaped here, only seen to exit (waitid with WNOWAIT): until it is reaped its pid
    cannot be reused, so killing its process group then cannot hit another process.
    """
    out, err, rep = _Capture(limits.output_bytes), _Capture(limits.output_bytes), _Capture(_REPORT_BYTES)
    captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_fd: rep}
    deadline = start + limits.timeout_s
    timed_out, exited_at = False, None
    pidfd = _pidfd(proc.pid)  # readable when the child exits: no polling
    with selectors.DefaultSelector() as selector:
        for fd in captures:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                if exited_at is None and _has_exited(proc.pid):
                    exited_at = now
                    _kill_group(proc.pid)  # anything it left behind
                if exited_at is None and now >= deadline and not timed_out:
                    timed_out = True
                    _kill_group(proc.pid)
                pipes_open = any(key.fd in captures for key in selector.get_map().values())
                if exited_at is not None and (not pipes_open or now - exited_at > _EXIT_GRACE_S):
                    break
                if exited_at is not None:
                    wait = _EXIT_GRACE_S - (now - exited_at)
                elif timed_out or pidfd is None:
                    wait = _POLL_S
                else:
                    wait = max(deadline - now, 0.0)
                for key, _ in selector.select(wait):
                    if key.fd == pidfd:
                        selector.unregister(pidfd)
                        continue
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if chunk:
                        captures[key.fd].add(chunk)
                    else:
                        selector.unregister(key.fd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return out, err, rep, timed_out


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Python built without it, or a kernel before 5.3
        return None


def _has_exited(pid: int) -> bool:
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(report: _Capture, nonce: str) -> tuple[dict | None, str | None]:
    """The harness's report, or None; and why the report pipe looks tampered with, or None."""
    if report.total == 0:
        return None, None
    body, newline, rest = bytes(report.data).partition(b"\n")
    if report.total > len(report.data) or not newline or rest:
        return None, "the report pipe carried data the harness did not write (the program wrote to it)"
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, "the report pipe carried something that is not a report (the program wrote to it)"
    if not isinstance(parsed, dict) or not hmac.compare_digest(str(parsed.get("nonce")).encode(), nonce.encode()):
        return None, "a report without this run's nonce: forged by the program"
    if parsed.get("status") not in STATUSES or parsed["status"] == "timeout":
        return None, f"a report with an unknown status {parsed.get('status')!r}"
    return parsed, None


def _verdict(
    report: dict | None, tampered: str | None, returncode: int, timed_out: bool, limits: Limits
) -> tuple[str, str | None, str, int]:
    """(status, error_type, message, tests_line) from what the parent saw. Pure: the rules in one place.
    Only a verdict taken from the harness's report carries a tests line."""
    if timed_out:
        return "timeout", None, f"exceeded the wall-clock limit of {limits.timeout_s:g} s; its process group was killed", 0
    if tampered is not None:
        return "error", "SandboxTampering", tampered, 0
    if returncode < 0:
        number = -returncode
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        meaning = {
            signal.SIGXCPU: f"exceeded the CPU time limit of {limits.cpu_s} s",
            signal.SIGKILL: "killed by SIGKILL (the hard CPU limit, or the kernel ran out of memory)",
            signal.SIGXFSZ: f"wrote a file larger than the limit of {limits.file_bytes:,} bytes",
            signal.SIGSEGV: "crashed with a segmentation fault",
        }.get(number, f"terminated by {name}")
        return "killed", name, meaning, 0
    if report is None:
        return "error", "EarlyExit", f"the process exited (status {returncode}) before the harness reported: os._exit, or a crash", 0
    if returncode != 0:  # the harness always exits 0 right after reporting
        return "error", "EarlyExit", f"the process exited with status {returncode} after reporting {report['status']}", 0
    line = report.get("tests_line")  # absent from a setup failure's report
    tests_line = line if type(line) is int and line > 0 else 0
    return report["status"], report.get("error_type") or None, str(report.get("message", "")), tests_line


def _remove_tree(path: str) -> None:
    """Delete the work dir, including what the program made unwritable; warn (never raise) if that fails."""

    def make_writable_and_retry(function, failed_path, _exc_info) -> None:
        os.chmod(os.path.dirname(failed_path), stat.S_IRWXU)
        function(failed_path)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError as err:
        warnings.warn(f"sandbox: could not delete its work dir {path}: {err}", RuntimeWarning, stacklevel=3)
