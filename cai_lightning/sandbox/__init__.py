"""Run untrusted Python (code a model wrote) against its tests, and say whether it passed, from a place
the program cannot reach. Nothing here executes the program in the calling process. Linux only;
:func:`isolation_report` says which layers the program gets on this machine.

Each :func:`run` starts two fresh interpreters (``python -I -S``: no ``PYTHON*`` variables, no user site,
no site-packages), each told what to do by harness modules sent on its stdin:

- the **program** process (``program.py``) is locked in by ``isolation.py``, runs the program, then
  answers requests on its objects;
- the **judge** process (``judge.py``) never holds the program's code: it runs the tests, statement by
  statement, against proxies of the program's names, and writes the verdict on a pipe of its own to this
  process. The two talk over two pipes in a small format of plain data and handles (``wire.py``), decoded
  strictly (never pickle, never an object of the program's making).

So a verdict cannot be forged from inside the program: whatever it patches in its own interpreter, all it
can send are values, and ``f(1) == 2`` is decided by the judge's comparison of the judge's own objects.

What stops what (as root, the CI's case, and as an ordinary user, who gets the same layers through an
unprivileged user namespace except the uid switch). ``tests/test_sandbox_attacks.py`` runs each attack
both ways through ``evaluate()``; ``tests/test_sandbox.py`` and ``tests/test_isolation.py`` the rest.

======================================  ================================================================
attack                                  stopped by
======================================  ================================================================
forge a pass: patch the harness, fake   the judge (a separate process decides; the program only sends
reports, answer "True" to everything    data, and the tests' source never reaches it)
objects that lie: ``__eq__`` always     the wire: subclasses of plain types travel as plain values, and
True, an ``int``/``str`` subclass,      a program's object never equals, orders against nor computes
``__sub__`` answering 0                 with the tests' value by its own methods (see ``judge.py``)
reach the tests' names: a builtin       the judge resolves names from the tests' code: builtins are its
deleted and redefined, a test's flag    own (but the entry point), and a name the tests bound is theirs
rebound between statements
kill or signal the evaluator (``kill``, PID namespace (the program is its pid 1: no other pid to name) and
``pidfd_send_signal``, ``killpg``)      seccomp (every signal call, ``pidfd_*`` refused); as root also
                                        the uid switch
``setpriority`` / ``sched_setaffinity``  seccomp, PID namespace
on others; ``ptrace``,
``process_vm_*``
read the user's files (tokens, keys)    a new root: only the interpreter's library, ``/usr``, a few
                                        devices and the work dir exist; the environment is replaced
network                                 network namespace (loopback down) and seccomp (``socket``)
fork bombs, ``subprocess``, ``exec``    seccomp (``fork``/``clone``/``execve``), RLIMIT_NPROC = 0
memory bombs                            RLIMIT_AS (``MemoryError``: status ``killed``)
endless loops                           RLIMIT_CPU (``SIGXCPU``), then the wall clock (``timeout``)
fill the disk                           the work dir is a tmpfs of ``disk_bytes`` and ``disk_files``
                                        (``ENOSPC``: status ``killed``); RLIMIT_FSIZE per file
trees cleanup chokes on (deep nesting,  they live in that tmpfs and vanish with the program's mount
``chmod 000``, fifos)                   namespace; without one, ``workdirs.remove_tree`` (``rm -rf``)
                                        handles them and never raises
``kill -9`` of the evaluator            PR_SET_PDEATHSIG on every process (re-armed after each change
                                        of credentials), the PID namespace's end killing all in it;
                                        the next run sweeps the work dirs a dead evaluator left
floods of output                        capped capture; the rest is drained and dropped
leave early (``os._exit``, a crash)     the judge's verdict needs every test statement run; a program
                                        that dies mid-test is an ``error``, even if the tests catch it
======================================  ================================================================

**Not guaranteed.** The kernel is the boundary: a kernel exploit escapes all of this. seccomp refuses a
list of calls (default allow), not everything unneeded. Where the kernel gives no namespaces (a locked-down
container) the program runs with seccomp, rlimits and the uid switch only, can read what the user can,
and the report says so. The tests are trusted: they run unconfined in the judge, as the caller's user.
A test that compares two of the program's objects gets the program's answer (``Cell(1, 2) == Cell(1, 2)``
is the program's ``__eq__``), and the program's top-level names are read before each test statement.
The judge itself has the program's CPU limit, a memory limit, and reads at most ``wire.MAX_REPLY``
bytes in one answer (more fails the run: ``ReplyTooLarge``).

**Statuses.** ``passed``; ``failed`` (an ``AssertionError``, or ``ReplyTooLarge``); ``error`` (any other exception, with its
class name as ``error_type`` and its module-qualified name as ``error_qualname``: ``SyntaxError`` naming
the program or the tests, ``SystemExit`` of any code, ``EarlyExit`` for a program process that ended
before the tests did or broke the channel, ``NameError`` for a program without its entry point,
``BadInput``, ``SandboxError``); ``timeout`` (the wall-clock limit); ``killed`` (a resource limit: ``MemoryError``, a
write over ``file_bytes`` or ``disk_bytes`` (``OSError``), or a signal such as ``SIGXCPU``; a crash such
as ``SIGSEGV`` is reported the same way). Output beyond ``Limits.output_bytes`` is drained and dropped,
not an error: the result keeps the first bytes and a one-line note.

The program runs as module ``__sandbox__`` (also registered as ``__main__``), so an
``if __name__ == "__main__":`` demo block does not run, as when the program is imported.

Why one long module: it is the parent's whole side of the sandbox (launching both children, deadlines, the
verdict, the worker pool), the one module the rest of the project imports; the children's sides are
``program.py``, ``judge.py``, ``isolation.py`` and ``wire.py``.
"""

from __future__ import annotations

import functools
import marshal
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cai_lightning.sandbox import workdirs

STATUSES = ("passed", "failed", "error", "timeout", "killed")
MAX_SOURCE_CHARS = 1_000_000  # program or tests longer than this are not run
MESSAGE_CHARS = 500
# Sandbox uids are SANDBOX_UID_BASE + the program process's pid, so concurrent programs never share one.
# 0x70000000 lies above the ranges systemd hands to containers and dynamic users (systemd's UIDS-GIDS.md).
SANDBOX_UID_BASE = 0x7000_0000
_REPORT_BYTES = 65_536  # the judge's verdict is well under 2 KB
_READ_CHUNK = 65_536
_EXIT_GRACE_S = 2.0  # after a child exits, how long to wait for its pipes to reach EOF
_POLL_S = 0.05  # how often to check for exits when pidfd_open is unavailable
_ANSWER_GRACE_S = 0.5  # after the verdict, how long the program has to see the closed channel and exit
_REAP_GRACE_S = 0.2  # after its inner process is killed, how long the outer has to reap it and exit
# The few lines each child runs (`python -I -S -B -c _BOOT`): read the harness modules (compiled code) and
# the config from stdin, register the modules under their package names, and call the entry's main().
_BOOT = """\
import marshal, sys, types
payload = marshal.loads(sys.stdin.buffer.read())
for name in ("cai_lightning", "cai_lightning.sandbox"):
    sys.modules[name] = types.ModuleType(name)
for name, code in payload.pop("modules"):
    sys.modules[name] = module = types.ModuleType(name)
    module.__builtins__ = dict(vars(__builtins__))  # a program that patches builtins cannot break these
    exec(code, module.__dict__)
    parent, _, leaf = name.rpartition(".")
    setattr(sys.modules[parent], leaf, module)
sys.modules[payload["entry"]].main(payload.pop("config"))
"""
_PROGRAM_MODULES = ("wire", "isolation", "program")
_JUDGE_MODULES = ("wire", "judge")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run.

    Args:
        timeout_s: Wall clock for the whole run (both processes, startup included); then both are killed.
        cpu_s: CPU seconds of the program (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later.
        memory_mb: Address space of the program in MiB (RLIMIT_AS), the interpreter's ~20 MiB included;
            allocations beyond it raise MemoryError.
        output_bytes: Bytes of stdout, and of stderr, kept in the result; the rest is read and dropped.
        file_bytes: Largest file the program may write (RLIMIT_FSIZE); writing beyond it fails with
            "File too large" (Python ignores SIGXFSZ), which counts as ``"killed"``.
        disk_bytes: Size of the program's work dir, a tmpfs of its own (the per-run disk quota): writing
            beyond it fails with "No space left on device".
        disk_files: Files and directories the work dir can hold (its tmpfs's inodes).
    """

    timeout_s: float = 10.0
    cpu_s: int = 5
    memory_mb: int = 512
    output_bytes: int = 16_384
    file_bytes: int = 1_048_576
    disk_bytes: int = 16 << 20
    disk_files: int = 4096

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "output_bytes", "file_bytes", "disk_bytes", "disk_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.memory_mb < 64:  # the interpreter and the harness need about 20 MiB before the program runs
            raise ValueError(f"Limits.memory_mb must be at least 64, got {self.memory_mb!r}")


@dataclass(frozen=True)
class Result:
    """How one sandboxed run ended.

    ``status`` is one of :data:`STATUSES` (see the module docstring); ``error_type`` names the exception
    class or signal, None for a pass or a timeout; ``error_qualname`` is the same with the class's module
    (``re.error``, ``json.decoder.JSONDecodeError``, ``__sandbox__.Stack.Empty`` for the program's own
    class; a builtin's by its name alone, ``ValueError``), and what ``error_type`` says where no exception
    class ended the run (a signal, ``EarlyExit``, ``SandboxError``); ``message`` is a short detail (at most
    ``MESSAGE_CHARS``) with the failing line where known; ``stdout`` / ``stderr`` are the program's, at most
    ``Limits.output_bytes`` bytes each, decoded as UTF-8, plus a note when more was dropped (a failed
    test's traceback from the judge follows the program's stderr).
    ``tests_stdout`` is what the tests printed (in the judge, from the values it holds; at most
    ``Limits.output_bytes``).
    ``tests_line`` is the line (1-based) of the tests whose top-level statement was running when the run
    failed: 0 when it passed or the failure did not come from the tests (the program's own top level, a
    timeout, a resource limit). Callers that hide some tests map it to a statement rather than parse
    ``message``, which carries the exception's text.
    """

    status: str
    error_type: str | None
    message: str
    stdout: str
    stderr: str
    duration_s: float
    tests_line: int = 0
    tests_stdout: str = ""
    error_qualname: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Job:
    """One program to run with :func:`run_many`; the fields are :func:`run`'s arguments."""

    program: str
    tests: str = ""
    entry_point: str = ""
    stdin: str = ""
    setup: str = ""


def run(
    program: str, tests: str = "", *, limits: Limits = Limits(), entry_point: str = "", stdin: str = "", setup: str = "",
) -> Result:
    """Run ``program`` in a sandboxed process and ``tests`` (assert statements) in the judge's, against it.

    ``entry_point``: the name the task asks the program to define (a function, a class). The tests get it
    from the program even when it is a builtin's name (``sum``), and a program without it fails with a
    ``NameError``; other names that a builtin has are the judge's own. Empty: no such name.
    ``stdin``: what the program reads from standard input (``input()`` raises EOFError past its end).
    ``setup``: Python run in the program's namespace before it (data a task defines), as line numbers
    and messages name ``<setup>``.

    Never raises for bad input (not a str, null bytes, over ``MAX_SOURCE_CHARS`` characters): that is an
    ``"error"`` result with error_type ``"BadInput"``; a process that cannot be started is an ``"error"``
    with ``"SandboxError"``.
    """
    problem = _input_problem(program, tests, stdin, setup)
    if problem is not None:
        return _error_result("BadInput", problem)
    if not isinstance(entry_point, str) or not (entry_point == "" or entry_point.isidentifier()):
        return _error_result("BadInput", f"the entry point must be a Python name, got {entry_point!r}")
    return _execute(Job(program, tests, entry_point, stdin, setup), limits)[0]


def run_many(
    jobs: Sequence[Job | tuple[str, str] | tuple[str, str, str]], *, limits: Limits = Limits(), workers: int | None = None,
    progress: str | None = None,
) -> list[Result]:
    """Run many jobs (:class:`Job`, or ``(program, tests)`` / ``(program, tests, entry_point)`` tuples; see
    :func:`run`), at most ``workers`` at once (default: one per CPU core). Results come back in input
    order; a job of another shape gives a ``"BadInput"`` result. With
    ``progress``, a progress bar of that title counts the programs run. Raises ValueError for ``workers < 1``."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"run_many: workers must be at least 1, got {workers}")
    jobs = list(jobs)
    if not jobs:
        return []

    def one(job: Job | tuple) -> Result:
        if isinstance(job, (tuple, list)) and len(job) in (2, 3):
            job = Job(*job)
        if not isinstance(job, Job):
            return _error_result("BadInput", f"a job must be a Job or (program, tests[, entry_point]), got {type(job).__name__}")
        return run(job.program, job.tests, limits=limits, entry_point=job.entry_point, stdin=job.stdin, setup=job.setup)

    # Threads only wait on pipes; the work happens in the children.
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox") as pool:
        results = pool.map(one, jobs)  # in input order, as each finishes
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(jobs), desc=progress, unit="program", dynamic_ncols=True)
        return list(results)


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
    """Which isolation layers the program's process gets on this machine: layer name → ``"on: ..."`` or
    ``"off: why"``. Runs one empty program. Raises RuntimeError when even that does not pass."""
    result, layers = _execute(Job(""), limits)
    if not result.passed or not layers:
        raise RuntimeError(
            f"the sandbox could not run an empty program: {result.status} {result.error_type}: {result.message}"
        )
    return layers


# ----------------------------------------------------------------------------------------------------
# Launching the two children and reading the verdict.


def _input_problem(program: object, tests: object, stdin: object = "", setup: object = "") -> str | None:
    """Why ``(program, tests)`` (with that ``stdin`` and ``setup``) cannot be run, or None."""
    for name, value in (("program", program), ("tests", tests), ("stdin", stdin), ("setup", setup)):
        if not isinstance(value, str):
            return f"the {name} must be a str, got {type(value).__name__}"
        if "\x00" in value:
            return f"the {name} contains a null byte (at character {value.index(chr(0))}); Python source cannot"
        if len(value) > MAX_SOURCE_CHARS:
            return f"the {name} has {len(value):,} characters, more than the limit of {MAX_SOURCE_CHARS:,}"
    return None


def _error_result(error_type: str, message: str) -> Result:
    return Result("error", error_type, message[:MESSAGE_CHARS], "", "", 0.0, error_qualname=error_type)


@functools.cache
def _module_code(name: str):
    """A harness module compiled once per process; children get the code object, not the source."""
    path = Path(__file__).with_name(f"{name}.py")
    return f"cai_lightning.sandbox.{name}", compile(path.read_text(), str(path), "exec", dont_inherit=True)


_sweep_lock = threading.Lock()
_swept = False


def _sweep_once() -> None:
    """On this process's first run: delete the work dirs a killed evaluator left behind."""
    global _swept
    with _sweep_lock:
        if not _swept:
            _swept = True
            workdirs.sweep_stale()


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


class _Child:
    """One child process: its Popen, and when it was seen to exit. Started first, told what to run by
    :meth:`send` after: a payload over the pipe's 64 KiB blocks the writer until the child's interpreter
    is up and reading, so both children are started before either is sent one (they boot in parallel)."""

    def __init__(self, entry: str, modules: tuple[str, ...], config: dict, pass_fds: tuple[int, ...], workdir: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-u", "-c", _BOOT], bufsize=0,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=pass_fds, cwd=workdir, env=_child_env(workdir), start_new_session=True,
        )
        self.pid = self.proc.pid
        self.exit_code: int | None = None  # as Popen.returncode: negative for a signal
        self.exited_at: float | None = None
        self.group_kill_at: float | None = None
        self.payload = marshal.dumps({"modules": [_module_code(m) for m in modules], "entry": entry, "config": config})

    def send(self) -> None:
        """Write the payload (harness modules, entry, config) to the child's stdin and close it."""
        payload, self.payload = self.payload, b""
        try:
            self.proc.stdin.write(payload)  # read to the end by the child before anything else
        except BrokenPipeError:  # it died at startup: its exit status tells
            pass
        finally:
            self.proc.stdin.close()

    def has_exited(self) -> bool:
        """Seen to exit, not reaped (waitid WNOWAIT): until it is reaped, its pid and process group
        cannot be reused, so killing the group cannot hit another process."""
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def kill(self) -> None:
        """SIGKILL the whole process group at once."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, now: float) -> None:
        """SIGKILL the process's children first (the program, pid 1 of its namespace), so that the process
        reaps them and exits itself; :meth:`kill` the group if it has not after ``_REAP_GRACE_S``. Killed
        at once, the inner would outlive its parent as a zombie until the machine's init reaps it."""
        if self.group_kill_at is not None:
            return
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                inner = [int(pid) for pid in f.read().split()]
        except OSError:
            inner = []
        for pid in inner:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.group_kill_at = now + (_REAP_GRACE_S if inner else 0.0)

    def reap(self) -> None:
        self.exit_code = self.proc.wait()


def _child_env(workdir: str) -> dict[str, str]:
    """The children's whole environment: nothing of the caller's (tokens, HF_* and the like) gets through."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}


def _execute(job: Job, limits: Limits) -> tuple[Result, dict[str, str] | None]:
    """Run one job; the result, and the isolation layers the program's process reported."""
    _sweep_once()
    workdir = workdirs.make_workdir()
    to_program_r, to_program_w = os.pipe()  # judge -> program: requests, answers to callbacks
    to_judge_r, to_judge_w = os.pipe()  # program -> judge
    report_r, report_w = os.pipe()  # judge -> this process: the verdict
    child_fds = (to_program_r, to_program_w, to_judge_r, to_judge_w, report_w)
    children: list[_Child] = []
    start = time.monotonic()
    try:
        common = {"parent_pid": os.getpid(), "limits": {
            "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb, "file_bytes": limits.file_bytes,
            "disk_bytes": limits.disk_bytes, "disk_files": limits.disk_files,
        }}
        try:
            judge = _Child("cai_lightning.sandbox.judge", _JUDGE_MODULES, {
                **common, "tests": job.tests, "entry_point": job.entry_point, "read_fd": to_judge_r, "write_fd": to_program_w, "report_fd": report_w,
            }, (to_judge_r, to_program_w, report_w), workdir)
            children.append(judge)
            prog = _Child("cai_lightning.sandbox.program", _PROGRAM_MODULES, {
                **common, "program": job.program, "stdin": job.stdin, "setup": job.setup, "read_fd": to_program_r, "write_fd": to_judge_w,
                "workdir": workdir, "uid_base": SANDBOX_UID_BASE, "keep_fds": [to_program_r, to_judge_w],
            }, (to_program_r, to_judge_w), workdir)
            children.append(prog)
            for child in (prog, judge):  # the program's side has more to do before it is ready
                child.send()
        except OSError as err:
            for child in children:
                child.kill()
                child.reap()
            return _error_result("SandboxError", f"could not start the sandbox: {err}"), None
        finally:
            for fd in child_fds:
                os.close(fd)
        try:
            captures, timed_out = _collect(judge, prog, report_r, limits, start)
        except BaseException:  # an interrupted parent must not leave children running
            for child in children:
                child.kill()
            raise
        finally:
            for child in children:
                child.kill()
                child.reap()
                for stream in (child.proc.stdout, child.proc.stderr):
                    stream.close()
        duration = time.monotonic() - start
    finally:
        os.close(report_r)
        workdirs.remove_tree(workdir)
    out, err, judge_err, judge_out, report = captures
    verdict = _read_report(report)
    status, error_type, message, tests_line, error_qualname = _verdict(verdict, prog, judge, timed_out, limits)
    stderr = err.text() + (judge_err.text() if status != "passed" and judge_err.total else "")
    result = Result(
        status, error_type or None, message[:MESSAGE_CHARS], out.text(), stderr, duration, tests_line, judge_out.text(),
        error_qualname or None,
    )
    return result, (verdict or {}).get("layers")


def _collect(judge: _Child, prog: _Child, report_fd: int, limits: Limits, start: float):
    """Drain both children's output and the judge's report until both have exited and their pipes are
    closed. Once the judge is done the program sees its channel closed and exits, or is killed
    ``_ANSWER_GRACE_S`` later; both are killed at the wall-clock limit. Returns the captures (program stdout, stderr, judge stderr, judge stdout, report) and
    whether it timed out."""
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    judge_err, judge_out, report = _Capture(limits.output_bytes), _Capture(limits.output_bytes), _Capture(_REPORT_BYTES)
    captures = {
        prog.proc.stdout.fileno(): out, prog.proc.stderr.fileno(): err, judge.proc.stderr.fileno(): judge_err,
        judge.proc.stdout.fileno(): judge_out, report_fd: report,
    }
    deadline = start + limits.timeout_s
    timed_out = False
    pidfds = {fd: child for child in (judge, prog) if (fd := _pidfd(child.pid)) is not None}
    with selectors.DefaultSelector() as selector:
        for fd in captures:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        for fd in pidfds:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while True:
                now = time.monotonic()
                for child in (judge, prog):
                    if child.exited_at is None and child.has_exited():
                        child.exited_at = now
                        child.kill()  # anything it left behind
                if now >= deadline and not timed_out and (judge.exited_at is None or prog.exited_at is None):
                    timed_out = judge.exited_at is None
                    judge.kill()
                    prog.stop(now)
                if judge.exited_at is not None and prog.exited_at is None and now - judge.exited_at > _ANSWER_GRACE_S:
                    prog.stop(now)  # the verdict is in, and the program did not leave on the closed channel
                for child in (judge, prog):
                    if child.exited_at is None and child.group_kill_at is not None and now >= child.group_kill_at:
                        child.kill()
                last_exit = max(judge.exited_at or 0.0, prog.exited_at or 0.0)
                both_exited = judge.exited_at is not None and prog.exited_at is not None
                pipes_open = any(key.fd in captures for key in selector.get_map().values())
                if both_exited and (not pipes_open or now - last_exit > _EXIT_GRACE_S):
                    break
                if both_exited:
                    wait = _EXIT_GRACE_S - (now - last_exit)
                elif timed_out or len(pidfds) < 2 or judge.exited_at is not None or prog.group_kill_at is not None:
                    wait = _POLL_S
                else:
                    wait = max(deadline - now, 0.0)
                for key, _ in selector.select(wait):
                    if key.fd in pidfds:
                        selector.unregister(key.fd)
                        continue
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if chunk:
                        captures[key.fd].add(chunk)
                    else:
                        selector.unregister(key.fd)
        finally:
            for fd in pidfds:
                os.close(fd)
    return (out, err, judge_err, judge_out, report), timed_out


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Python built without it, or a kernel before 5.3
        return None


def _read_report(report: _Capture) -> dict | None:
    """The judge's verdict (written by the judge alone: the program has no end of its pipe), or None."""
    if report.total == 0 or report.total > len(report.data):
        return None
    try:
        verdict = marshal.loads(bytes(report.data))
    except (EOFError, ValueError, TypeError):
        return None
    return verdict if isinstance(verdict, dict) and verdict.get("status") in STATUSES else None


def _verdict(
    report: dict | None, prog: _Child, judge: _Child, timed_out: bool, limits: Limits,
) -> tuple[str, str, str, int, str]:
    """(status, error_type, message, tests_line, error_qualname) from the judge's report and how the
    program's process ended. Pure: the rules in one place. Only the judge can say "passed"."""
    if timed_out:
        timeout = f"exceeded the wall-clock limit of {limits.timeout_s:g} s; both processes were killed"
        return "timeout", "", timeout, 0, ""
    if report is None and judge.exit_code == -signal.SIGXCPU:
        return "killed", "SIGXCPU", (
            f"the judge exceeded its CPU time limit of {limits.cpu_s} s (the tests' own work and decoding the "
            "program's answers)"
        ), 0, "SIGXCPU"
    if report is None:
        ended = f"the judge ended without a verdict (exit status {judge.exit_code})"
        return "error", "SandboxError", ended, 0, "SandboxError"
    status, error_type = report["status"], str(report.get("error_type", ""))
    qualname = str(report.get("error_qualname", "")) or error_type
    message, tests_line = str(report.get("message", "")), report.get("tests_line", 0)
    if status != "passed" and error_type == "EarlyExit" and prog.exit_code is not None and prog.exit_code < 0:
        number = -prog.exit_code  # as isolation.ending() told it: a SIGKILL at the CPU limit is SIGXCPU
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        meaning = {
            signal.SIGXCPU: f"exceeded the CPU time limit of {limits.cpu_s} s",
            signal.SIGKILL: "killed by SIGKILL (the kernel ran out of memory, or the process was killed)",
            signal.SIGXFSZ: f"wrote a file larger than the limit of {limits.file_bytes:,} bytes",
            signal.SIGSEGV: "crashed with a segmentation fault",
        }.get(number, f"terminated by {name}")
        return "killed", name, meaning, 0, name
    if status != "passed" and error_type == "EarlyExit" and prog.exit_code is not None:
        message = f"the program's process exited (status {prog.exit_code}) before the tests finished: os._exit, or a crash"
    return status, error_type, message, tests_line if type(tests_line) is int and tests_line > 0 else 0, qualname
