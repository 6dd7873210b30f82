"""isolation.isolate, driven as the sandbox drives it: a fresh ``python -I -S -B`` gets isolation.py's
source and a config on stdin, calls ``isolate``, then runs a small probe program that prints facts as
``name=value`` lines. Each probe runs as root and as an unprivileged user (``nobody``, started through
:func:`unprivileged`; as a non-root test runner, as that user), each child under a hard timeout.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import marshal
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
from unprivileged import NOBODY, nobody_argv

from cai_lightning.sandbox import _child_env as child_env
from cai_lightning.sandbox.isolation import (
    ending,
    isolate,
    outermost,
    unescape_mount_point,
)
from cai_lightning.sandbox.workdirs import remove_tree

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's isolation is Linux only")

REPO = Path(__file__).resolve().parents[1]
SOURCE = (REPO / "cai_lightning" / "sandbox" / "isolation.py").read_text()
STAGE: Path  # set by the _stage fixture
STDLIB = sysconfig.get_paths()["stdlib"]
PYTHON = os.path.realpath(sys.executable)  # the child needs no venv (-S), and nobody may not reach this one
LIMITS = {"cpu_s": 5, "memory_mb": 256, "file_bytes": 4 << 20, "disk_bytes": 1 << 20, "disk_files": 50}
TIMEOUT_S = 20
# What the lead's BOOT does: the module from source (no site-packages in the child), then isolate().
BOOT = r"""
import marshal, sys, types
payload = marshal.loads(sys.stdin.buffer.read())
if payload["refuse_unshare"]:  # a kernel that offers no namespaces, simulated
    import ctypes
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    ctx = ctypes.c_void_p(lib.seccomp_init(0x7FFF0000))
    lib.seccomp_rule_add(ctx, 0x00050001, lib.seccomp_syscall_resolve_name(b"unshare"), 0)
    assert ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) == 0 and lib.seccomp_load(ctx) == 0
module = types.ModuleType("cai_lightning.sandbox.isolation")
sys.modules[module.__name__] = module
exec(compile(payload["source"], "isolation.py", "exec"), module.__dict__)
layers = {}
module.isolate(payload["config"], layers)
for name, value in sorted(layers.items()):
    print("layer.%s=%s" % (name, value))
exec(compile(payload["probe"], "<probe>", "exec"), {"__name__": "__probe__"})
"""
# Helpers for the probes: fact(name, function) prints name=result, or the errno's name, or the exception.
FACT = r"""
import errno, os
def fact(name, function):
    try:
        value = function()
    except OSError as err:
        value = errno.errorcode.get(err.errno, err.errno)
    except Exception as err:
        value = type(err).__name__
    print("%s=%s" % (name, value), flush=True)
"""
KINDS = [
    pytest.param("root", marks=pytest.mark.skipif(os.geteuid() != 0, reason="needs root")),
    pytest.param("unprivileged"),
]


@pytest.fixture(scope="module", autouse=True)
def _stage():
    """Where the unprivileged runs' bind mounts pass through (see unprivileged.nobody_argv)."""
    global STAGE
    STAGE = Path(tempfile.mkdtemp(prefix="cai-isolation-stage-"))
    yield
    remove_tree(str(STAGE))


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run as ``nobody`` when this process is root; as any other user, ``argv`` itself."""
    return nobody_argv(argv, STAGE) if os.geteuid() == 0 else argv


def make_workdir() -> str:
    """An empty work dir the child's user can reach (under /tmp, not pytest's 0700 tmp_path)."""
    path = tempfile.mkdtemp(prefix="cai-isolation-test-", dir="/tmp")
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)  # for the unprivileged runs; root can use it either way
    return path


@pytest.fixture
def workdir():
    """A work dir for one test, which fails if the sandbox left anything in it."""
    path = make_workdir()
    yield path
    left = os.listdir(path)
    shutil.rmtree(path)
    assert left == [], f"the sandbox left {left} on the host disk"


def launch(probe: str, kind: str, workdir: str, *, limits: dict = LIMITS, keep_fds: tuple = (),
           refuse_unshare: bool = False) -> tuple[list[str], bytes]:
    """The child's argv and its stdin payload (the evaluator's pid is filled in by whoever starts it)."""
    argv = [PYTHON, "-I", "-S", "-B", "-c", BOOT]
    config = {"workdir": workdir, "uid_base": 0x7000_0000, "parent_pid": os.getpid(), "keep_fds": list(keep_fds),
              "limits": limits}
    payload = {"source": SOURCE, "config": config, "probe": FACT + probe, "refuse_unshare": refuse_unshare}
    return (unprivileged(argv) if kind == "unprivileged" else argv), marshal.dumps(payload)


def run_probe(probe: str, kind: str, workdir: str, **options) -> tuple[int, dict[str, str], str]:
    """Run a probe to its end: (return code, facts by name, stderr)."""
    argv, payload = launch(probe, kind, workdir, **options)
    done = subprocess.run(argv, check=False, input=payload, capture_output=True, cwd=workdir, env=child_env(workdir),
                          start_new_session=True, timeout=TIMEOUT_S, pass_fds=options.get("keep_fds", ()))
    facts = dict(line.partition("=")[::2] for line in done.stdout.decode().splitlines() if "=" in line)
    return done.returncode, facts, done.stderr.decode()


@functools.cache
def offered(kind: str) -> dict[str, str]:
    """The layers a child of this kind gets on this machine: one empty probe."""
    path = make_workdir()
    try:
        code, found, stderr = run_probe("", kind, path)
    finally:
        shutil.rmtree(path)
    assert code == 0, stderr
    return {name.removeprefix("layer."): value for name, value in found.items() if name.startswith("layer.")}


def require(kind: str, *names: str) -> None:
    """Skip, with the reason, when this machine does not offer a layer: no user namespaces for this user,
    or no libseccomp. Any other "off" is not the machine's doing and fails the tests that need the layer."""
    machine = ("off: unshare failed", "off: libseccomp is not installed")
    missing = [f"{n} {offered(kind)[n]}" for n in names if offered(kind)[n].startswith(machine)]
    if missing:
        pytest.skip("not offered on this machine: " + "; ".join(missing))


FACTS = r"""
import socket, threading
fact("pid", os.getpid)
fact("ppid", os.getppid)
fact("uid", os.getuid)
fact("cwd", os.getcwd)
fact("root", lambda: sorted(os.listdir("/")))
for path in ("/root/.cache", "/home", REPO, SIBLING, "/proc/1", "/etc/passwd"):
    fact("exists " + path, lambda: os.path.exists(path))
for path in ("/", "/usr", STDLIB, "/etc", "/dev", "/proc", "/tmp"):
    fact("create in " + path, lambda: os.close(os.open(os.path.join(path, "x"), os.O_CREAT | os.O_WRONLY, 0o600)))
fact("write /dev/null", lambda: os.write(os.open("/dev/null", os.O_WRONLY), b"x"))
fact("imports", lambda: [__import__(m) for m in ("json", "re", "collections", "decimal", "ctypes")] and "ok")
fact("decimal", lambda: str(__import__("decimal").Decimal(1) / 8))
fact("urandom", lambda: len(os.urandom(16)))
fact("mmap", lambda: len(__import__("mmap").mmap(-1, 1 << 20)))
fact("memory", lambda: len(bytearray(50 << 20)))
fact("time", lambda: __import__("time").time() > 1.6e9)

def fill_disk():
    fd, written = os.open("big", os.O_CREAT | os.O_WRONLY, 0o600), 0
    try:
        while True:
            written += os.write(fd, b"x" * 65536)
    except OSError as err:
        print("disk written=%d" % written)
        raise
    finally:
        os.close(fd)
        os.remove("big")
fact("disk full", fill_disk)

def fill_inodes():
    made = 0
    try:
        while True:
            os.close(os.open("f%d" % made, os.O_CREAT | os.O_WRONLY, 0o600))
            made += 1
    except OSError:
        print("files made=%d" % made)
        raise
fact("inodes full", fill_inodes)
fact("workdir mode", lambda: oct(os.stat(".").st_mode & 0o777))
fact("workdir owner", lambda: os.stat(".").st_uid == os.getuid())

import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def syscall_errno(call):
    return call() == -1 and errno.errorcode[ctypes.get_errno()]
fact("kill", lambda: os.kill(1, 0))
fact("fork", os.fork)
fact("thread", lambda: threading.Thread(target=print).start())
fact("socket", socket.socket)
fact("socketpair", socket.socketpair)
fact("pidfd_open", lambda: os.pidfd_open(1))
fact("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
fact("sched_setaffinity", lambda: os.sched_setaffinity(0, {0}))
fact("setsid", os.setsid)
fact("ptrace", lambda: syscall_errno(lambda: libc.ptrace(16, 1, 0, 0)))  # PTRACE_ATTACH
fact("mount", lambda: syscall_errno(lambda: libc.mount(b"tmpfs", b"/tmp", b"tmpfs", 0, None)))
fact("unshare", lambda: syscall_errno(lambda: libc.unshare(0x40000000)))
fact("pdeathsig", lambda: syscall_errno(lambda: libc.prctl(1, 0, 0, 0, 0)))
fact("pdeathsig high bits", lambda: syscall_errno(lambda: libc.syscall(PRCTL, ctypes.c_long(1 + (1 << 32)), 0)))
"""


@pytest.fixture(scope="module", params=KINDS)
def facts(request) -> tuple[str, dict[str, str], str]:
    """The FACTS probe, run once per kind of user: (kind, facts, work dir)."""
    kind = request.param
    require(kind, "pid", "seccomp")
    path = make_workdir()
    sibling = tempfile.mkdtemp(prefix="cai-isolation-sibling-", dir="/tmp")  # another run's work dir
    try:
        prctl = ctypes.CDLL("libseccomp.so.2").seccomp_syscall_resolve_name(b"prctl")  # its number here
        probe = f"REPO, SIBLING, STDLIB, PRCTL = {str(REPO)!r}, {sibling!r}, {STDLIB!r}, {prctl}\n" + FACTS
        code, found, stderr = run_probe(probe, kind, path)
        assert code == 0, stderr
        assert os.listdir(path) == [], "the program's files reached the host disk"
    finally:
        shutil.rmtree(path)
        os.rmdir(sibling)
    return kind, found, path


def test_every_layer_is_on(facts):
    kind, found, _ = facts
    for name in ("process", "pid", "network", "ipc", "filesystem", "disk", "seccomp", "rlimits"):
        assert found["layer." + name].startswith("on: "), (name, found["layer." + name])
    if kind == "root":
        assert found["layer.user"] == f"on: uid {found['uid']}, no groups, no capabilities"
        assert int(found["uid"]) > 0x7000_0000  # uid_base + the outer's pid
    else:
        assert found["layer.user"].startswith("off: not root; capabilities dropped")


def test_the_program_is_pid_1_and_names_no_other_process(facts):
    _, found, _ = facts
    assert (found["pid"], found["ppid"]) == ("1", "0")
    assert found["exists /proc/1"] == "False"


def test_only_the_interpreter_and_the_work_dir_are_visible(facts):
    _, found, workdir = facts
    assert found["cwd"] == workdir
    shown = {"dev", "proc", "usr", STDLIB.split("/")[1], workdir.split("/")[1]}
    shown |= {path[1:] for path in ("/bin", "/sbin", "/lib", "/lib64") if os.path.lexists(path)}
    shown |= {"etc"} if os.path.isfile("/etc/ld.so.cache") else set()
    assert found["root"] == str(sorted(shown))  # here: bin dev etc lib lib64 proc root sbin tmp usr
    for path in ("/root/.cache", "/home", str(REPO), "/etc/passwd"):
        assert found["exists " + path] == "False", path
    assert [v for k, v in found.items() if k.startswith("exists /tmp/cai-isolation-sibling")] == ["False"]
    assert found["imports"] == "ok" and found["decimal"] == "0.125"


def test_everything_but_the_work_dir_is_read_only(facts):
    _, found, _ = facts
    for path in ("/", "/usr", STDLIB, "/etc", "/dev", "/proc", "/tmp"):
        assert found["create in " + path] == "EROFS", path
    assert found["write /dev/null"] == "1"


def test_the_work_dir_is_a_tmpfs_with_the_quota(facts):
    _, found, _ = facts
    assert found["disk full"] == "ENOSPC"
    assert int(found["disk written"]) <= LIMITS["disk_bytes"]
    assert (found["inodes full"], found["files made"]) == ("ENOSPC", str(LIMITS["disk_files"]))
    assert (found["workdir mode"], found["workdir owner"]) == ("0o700", "True")


def test_python_still_works_under_the_filter(facts):
    _, found, _ = facts
    assert (found["urandom"], found["mmap"], found["memory"], found["time"]) == ("16", str(1 << 20), str(50 << 20), "True")


def test_the_filter_refuses_what_reaches_other_processes_or_the_kernel(facts):
    _, found, _ = facts
    for name in ("kill", "fork", "socket", "socketpair", "pidfd_open", "setpriority", "sched_setaffinity", "setsid",
                 "ptrace", "mount", "unshare", "pdeathsig", "pdeathsig high bits"):
        assert found[name] == "EPERM", (name, found[name])
    assert found["thread"] == "RuntimeError"  # clone refused: "can't start new thread"


@pytest.mark.parametrize("kind", KINDS)
def test_a_program_over_its_cpu_limit_is_reported_as_sigxcpu(kind, workdir):
    """As pid 1 the program ignores SIGXCPU; the hard limit's SIGKILL is mirrored as SIGXCPU."""
    code, _, stderr = run_probe("while True:\n    pass\n", kind, workdir, limits={**LIMITS, "cpu_s": 1})
    assert code == -signal.SIGXCPU, stderr


@pytest.mark.parametrize("kind", KINDS)
def test_the_outer_ends_as_the_program_did(kind, workdir):
    require(kind, "pid", "seccomp")
    assert run_probe("os._exit(7)", kind, workdir)[0] == 7
    assert run_probe("import ctypes; ctypes.string_at(0)", kind, workdir)[0] == -signal.SIGSEGV
    assert run_probe("os.abort()", kind, workdir)[0] == -signal.SIGSEGV  # raise(SIGABRT) refused; glibc faults


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 system calls exist on x86_64 only")
@pytest.mark.parametrize("kind", KINDS)
def test_a_system_call_of_another_abi_kills_the_program(kind, workdir):
    """x32's getpid: its number is x86_64's plus 1 << 30, so a filter keyed on numbers alone would miss
    kill, ptrace and the rest called this way."""
    require(kind, "pid", "seccomp")
    assert run_probe("import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39)", kind, workdir)[0] == -signal.SIGSYS


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_channel_stays_open_and_only_in_the_program(kind, workdir):
    """The program holds nothing but stdio and keep_fds, and the outer holds none of them: the evaluator
    sees EOF on the channel when the program closes it, while the program still runs."""
    require(kind, "pid")
    read_end, write_end = os.pipe()
    probe = (
        "def is_open(fd):\n    try:\n        return os.fstat(fd) is not None\n    except OSError:\n        return False\n"
        "fact('fds', lambda: [fd for fd in range(64) if is_open(fd)])\n"
        f"os.write({write_end}, b'x')\nos.close({write_end})\nimport time\ntime.sleep(30)\n"
    )
    argv, payload = launch(probe, kind, workdir, keep_fds=(write_end,))
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
                             env=child_env(workdir), start_new_session=True, pass_fds=(write_end,))
    os.close(write_end)
    try:
        child.stdin.write(payload)
        child.stdin.close()
        received = b""
        while select.select([read_end], [], [], TIMEOUT_S)[0]:
            chunk = os.read(read_end, 100)
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail("no EOF on the channel: a process besides the program still holds it")
        assert received == b"x" and child.poll() is None
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT_S)
        os.close(read_end)
    output = child.stdout.read().decode()
    assert f"fds=[0, 1, 2, {write_end}]" in output, output


def _state(pid: int) -> str | None:
    """The process's state letter, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry))
    return found


MIDDLE = r"""
import marshal, os, subprocess, sys
argv, cwd, env, payload = marshal.loads(sys.stdin.buffer.read())
payload = marshal.loads(payload)
payload["config"]["parent_pid"] = os.getpid()
child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
child.stdin.write(marshal.dumps(payload))
child.stdin.close()
while b"ready" not in child.stdout.readline():
    pass
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.parametrize("kind", KINDS)
def test_the_program_dies_with_the_evaluator_even_on_kill_9(kind, workdir):
    require(kind, "pid")
    argv, payload = launch("print('ready', flush=True)\nimport time\ntime.sleep(60)\n", kind, workdir)
    middle = subprocess.Popen([sys.executable, "-I", "-S", "-c", MIDDLE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    outer = None
    try:
        middle.stdin.write(marshal.dumps((argv, workdir, child_env(workdir), payload)))
        middle.stdin.close()
        ready, _, _ = select.select([middle.stdout], [], [], TIMEOUT_S)
        assert ready, "the sandboxed child did not start"
        outer = int(middle.stdout.readline())
        inner = _children(outer)
        assert len(inner) == 1, inner
        middle.kill()  # SIGKILL: no handler, no cleanup
        middle.wait(TIMEOUT_S)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and {_state(outer), _state(inner[0])} - {None, "Z"}:
            time.sleep(0.02)
        assert _state(outer) in (None, "Z") and _state(inner[0]) in (None, "Z"), "an orphan outlived the evaluator"
    finally:
        middle.kill()
        middle.wait(TIMEOUT_S)
        if outer is not None:  # after a failure: the orphans, which share the outer's process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(outer, signal.SIGKILL)


@pytest.mark.parametrize("kind", KINDS)
def test_without_namespaces_the_program_runs_in_place_and_says_so(kind, workdir):
    require(kind, "seccomp")  # the probe refuses unshare with a filter of its own
    probe = "fact('ppid', os.getppid)\nfact('kill', lambda: os.kill(os.getpid(), 0))\n"
    code, found, stderr = run_probe(probe, kind, workdir, refuse_unshare=True)
    assert code == 0, stderr
    for name in ("pid", "network", "ipc", "filesystem"):
        assert found["layer." + name] == "off: unshare failed (Operation not permitted)", name
    assert found["layer.disk"].startswith("off: no mount namespace")
    assert found["layer.seccomp"].startswith("on: ") and found["layer.process"].startswith("on: ")
    assert (found["ppid"], found["kill"]) == (str(os.getpid()), "EPERM")


def test_ending_reports_the_cpu_limit_for_a_kill_after_the_limit():
    killed, segfault, exited = signal.SIGKILL, signal.SIGSEGV, 3 << 8  # wait statuses
    assert ending(killed, cpu_seconds=2.1, cpu_limit_s=2) == -signal.SIGXCPU
    assert ending(killed, cpu_seconds=0.3, cpu_limit_s=2) == -signal.SIGKILL  # killed from outside
    assert ending(segfault, cpu_seconds=9, cpu_limit_s=2) == -signal.SIGSEGV
    assert ending(exited, cpu_seconds=9, cpu_limit_s=2) == 3


def test_a_bad_config_is_refused_before_anything_changes():
    config = {"workdir": "/tmp", "uid_base": 0, "parent_pid": 0, "keep_fds": [], "limits": LIMITS}
    with pytest.raises(ValueError, match="disk_bytes and disk_files must be positive"):
        isolate({**config, "limits": {**LIMITS, "disk_bytes": 0}}, {})  # tmpfs would read 0 as "unlimited"
    for workdir in ("/", "relative", "/tmp/../tmp", "/tmp/"):
        with pytest.raises(ValueError, match="real absolute path"):
            isolate({**config, "workdir": workdir}, {})


def test_helpers():
    assert outermost(["/usr", "/usr/lib", "/a/b", "/a/bc", "/a/b"]) == ["/a/b", "/a/bc", "/usr"]
    assert unescape_mount_point(b"/tmp/a\\040b\\134c") == b"/tmp/a b\\c"
