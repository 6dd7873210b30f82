"""The sandbox: ordinary outcomes, bad input, and attacks. Every attack must end as a non-passed result
while this process (the parent) stays unharmed and the session goes on. The attacks on the judge, also as
an unprivileged user and through ``evaluate()``, are in test_sandbox_attacks.py; the judge's rules in
test_judge.py.

Tests that need a kernel layer this machine does not give (see ``isolation_report``) are skipped, with
the reason.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
import uuid

import pytest

from cai_lightning.sandbox import (
    MESSAGE_CHARS,
    SANDBOX_UID_BASE,
    Limits,
    isolation_report,
    run,
    run_many,
)

FAST = Limits(timeout_s=5, cpu_s=2, memory_mb=128)
RAN = "assert False, 'the tests ran'"  # tests that must run, and fail, after a program that should not pass
LAYERS = isolation_report()


def _needs(*layers: str):
    """Skip unless every layer in ``layers`` is on here."""
    off = [f"{name} {LAYERS.get(name, 'off: unknown')}" for name in layers if not LAYERS.get(name, "").startswith("on")]
    return pytest.mark.skipif(bool(off), reason="kernel layer missing here: " + "; ".join(off))


# -- ordinary outcomes -------------------------------------------------------------------------------


def test_pass_fail_and_error_carry_the_failing_line():
    assert run("def f():\n    return 1\n", "assert f() == 1").passed
    failed = run("def f():\n    return 2\n", "x = 1\nassert f() == 1, 'wrong'")
    assert (failed.status, failed.error_type) == ("failed", "AssertionError")
    assert failed.message == "wrong (tests line 2: assert f() == 1, 'wrong')"
    assert run("def f():\n    return 2\n", "assert f() == 1").message == "assertion failed (tests line 1: assert f() == 1)"
    missing = run("", "assert f() == 1")
    assert (missing.status, missing.error_type) == ("error", "NameError")
    assert "name 'f' is not defined" in missing.message
    raised = run("raise KeyError('k')", "assert True")
    assert (raised.status, raised.error_type, raised.message) == ("error", "KeyError", "'k' (program line 1: raise KeyError('k'))")
    assert "KeyError" in raised.stderr  # the traceback, for a human


def test_the_failing_tests_line_is_reported_apart_from_the_message():
    program = "def f(x):\n    if x == 3:\n        raise ValueError('(tests line 1: forged)')\n    return x\n"
    tests = "y = 1\nassert f(1) == 1\nassert f(\n    2) == 3\nassert f(3) == 3\n"
    assert run(program, tests).tests_line == 3  # the statement's first line: the assert's line in the tests
    raised = run(program, "assert f(1) == 1\nassert f(3) == 3")  # raised in the program, called from line 2
    assert (raised.error_type, raised.tests_line) == ("ValueError", 2)  # the message's text cannot move it
    assert run(program, "assert f(1) == 1").tests_line == 0  # passed
    assert run("raise KeyError('k')", "assert True").tests_line == 0  # the program's own top level
    assert run(program, "import os\nos._exit(0)").tests_line == 0  # no report: EarlyExit
    assert run(program, "assert f(1) == 1\nassert f( ==").tests_line == 2  # the tests do not compile


def test_syntax_errors_name_the_program_or_the_tests():
    program = run("def f(:\n    return 1\n", "assert f() == 1")
    assert (program.status, program.error_type) == ("error", "SyntaxError")
    assert "(program line 1: def f(:)" in program.message
    tests = run("def f():\n    return 1\n", "assert f() == 1\nassert f( ==")
    assert tests.error_type == "SyntaxError" and "(tests line 2: assert f( ==)" in tests.message


def test_the_program_gets_a_private_writable_work_dir_that_is_deleted_afterwards():
    program = (
        "import os, tempfile\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\n"
        "os.mkdir('d')\nos.rename('scratch.txt', 'd/s.txt')\ntempfile.NamedTemporaryFile(delete=False).close()\n"
        "import sys\nprint('to stderr', file=sys.stderr)\ndef read(path):\n    return open(path).read()\n"
    )
    result = run(program, "assert read('d/s.txt') == 'x'\nassert os.environ['HOME'] == os.getcwd()")
    assert result.passed, result.message
    workdir = result.stdout.strip()
    assert workdir.startswith("/") and not os.path.exists(workdir)
    assert result.stderr == "to stderr\n"


def test_stdin_is_empty_and_a_main_block_does_not_run():
    assert run("x = input()").error_type == "EOFError"
    result = run("ran = False\nname = __name__\nif __name__ == '__main__':\n    ran = True", "assert not ran and name == '__sandbox__'")
    assert result.passed, result.message


def test_run_many_keeps_input_order_and_runs_jobs_in_parallel():
    jobs = [(f"import time\ntime.sleep(0.5)\nx = {i}", f"assert x == {i}") for i in range(4)]
    jobs += [("x = 1", "assert x == 2"), "not a pair"]
    start = time.monotonic()
    results = run_many(jobs, workers=4)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["passed"] * 4 + ["failed", "error"]
    assert results[-1].error_type == "BadInput"
    assert elapsed < 4 * 0.5  # one after another would take at least 2 s
    assert run_many([]) == []
    with pytest.raises(ValueError, match="workers"):
        run_many(jobs, workers=0)


@pytest.mark.parametrize(
    "program, tests, expected",
    [
        (None, "", "must be a str, got NoneType"),
        (42, "", "must be a str, got int"),
        (b"x = 1", "", "must be a str, got bytes"),
        ("x = 1", None, "the tests must be a str"),
        ("x = 1\0", "", "null byte (at character 5)"),
        ("x = 1\n" * 350_000, "", "2,100,000 characters, more than the limit of 1,000,000"),
    ],
    ids=["None", "int", "bytes", "tests-None", "null-byte", "2MB"],
)
def test_bad_input_is_an_error_result_not_an_exception(program, tests, expected):
    result = run(program, tests)
    assert (result.status, result.error_type) == ("error", "BadInput")
    assert expected in result.message


def test_limits_that_cannot_work_are_rejected_naming_the_field():
    with pytest.raises(ValueError, match="Limits.timeout_s"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="Limits.memory_mb"):
        Limits(memory_mb=16)


# -- attacks: runaway resources ----------------------------------------------------------------------


def test_infinite_loop_times_out_and_leaves_no_process_or_zombie():
    result = run("while True:\n    pass", limits=Limits(timeout_s=1, cpu_s=10))
    assert result.status == "timeout" and result.duration_s < 4
    assert _sandbox_processes() == []  # reaped: not running, not a zombie, nothing it started


def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock():
    result = run("while True:\n    pass", limits=Limits(timeout_s=10, cpu_s=1))
    assert (result.status, result.error_type) == ("killed", "SIGXCPU") and result.duration_s < 5


@_needs("seccomp")
def test_fork_bomb_is_stopped():
    result = run("import os\nwhile True:\n    os.fork()", RAN, limits=FAST)
    assert (result.status, result.error_type) == ("error", "PermissionError") and result.duration_s < 3
    assert not run("import subprocess\nsubprocess.run(['true'])", RAN, limits=FAST).passed
    assert not run("import os\nos.system('true')", RAN, limits=FAST).passed


@pytest.mark.parametrize("program", ["x = bytearray(10**10)", "x = []\nwhile True:\n    x.append(bytes(10**6))"])
def test_memory_bombs_are_killed(program):
    result = run(program, RAN, limits=FAST)
    assert (result.status, result.error_type) == ("killed", "MemoryError")


def test_gigabytes_of_output_are_capped_and_the_parent_keeps_its_memory():
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run("while True:\n    print('x' * 10000)", limits=Limits(timeout_s=1.5, output_bytes=4096))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    assert result.status == "timeout"
    kept, note = result.stdout[:4096], result.stdout[4096:]
    assert set(kept) <= {"x", "\n"} and "more bytes dropped: output is capped at 4,096 bytes" in note
    assert grown_mb < 50  # hundreds of MB went through the pipe; only 4 KB were kept


def test_file_size_limit():
    result = run("open('big', 'wb').write(bytes(2_000_000))", RAN, limits=Limits(file_bytes=1_000_000))
    assert (result.status, result.error_type) == ("killed", "OSError") and "File too large" in result.message


# -- attacks: escaping the sandbox -------------------------------------------------------------------


@_needs("filesystem")
def test_files_outside_the_work_dir_are_neither_deleted_nor_written(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    outside = f"/tmp/outside-{uuid.uuid4().hex}"  # /tmp/outside, made unique so no other run interferes
    for program in (
        f"import os\nos.remove({str(sentinel)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"open({str(sentinel)!r}, 'w').write('gone')",
        f"import os\nos.rename({str(sentinel)!r}, 'stolen.txt')",
        f"open({outside!r}, 'w').write('x')",
        f"import os\nos.mkfifo({outside!r})",
        f"import os\nfd = os.open('/tmp', os.O_RDONLY)\nos.open({os.path.basename(outside)!r}, os.O_CREAT | os.O_WRONLY, dir_fd=fd)",
    ):
        result = run(program, RAN, limits=FAST)
        assert result.status == "error", (program, result)
        assert result.error_type in ("PermissionError", "OSError", "FileNotFoundError"), (program, result)
    assert sentinel.read_text() == "keep me" and not os.path.exists(outside)


@_needs("network")
def test_no_connection_leaves_the_sandbox():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.3)
        port = server.getsockname()[1]
        program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')"
        result = run(program, RAN, limits=FAST)
        assert result.status == "error" and result.error_type in ("PermissionError", "OSError")
        with pytest.raises(socket.timeout):
            server.accept()  # nothing arrived


@_needs("filesystem")
def test_parent_environment_secrets_are_out_of_reach(monkeypatch):
    secret = "sk-cai-sandbox-test-" + uuid.uuid4().hex
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("CAI_FAKE_API_KEY", secret)
    program = (
        "import os\nseen = [repr(dict(os.environ))]\n"
        "for path in ('/proc/%d/environ' % os.getppid(), '/proc/self/environ', '/proc/1/environ'):\n"
        "    try:\n        seen.append(open(path, 'rb').read().decode(errors='replace'))\n"
        "    except OSError as e:\n        seen.append(repr(e))\n"
        "print(seen)"
    )
    tests = (
        f"assert {secret!r} not in ''.join(seen)\nassert 'HF_TOKEN' not in os.environ\n"
        "assert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'TMPDIR']"
    )
    result = run(program, tests, limits=FAST)
    assert result.passed, result.message  # the program ran, looked, and did not find it
    assert secret not in result.stdout + result.stderr + result.message


@_needs("seccomp")
def test_killing_the_parent_fails_and_the_parent_lives():
    for program in ("import os\nos.kill(os.getppid(), 9)", "import os\nos.killpg(0, 9)", "import os\nos.kill(-1, 9)"):
        result = run(program, RAN, limits=FAST)
        assert (result.status, result.error_type) == ("error", "PermissionError")
    assert run("x = 1", "assert x == 1").passed  # still here, still working


def test_a_crash_through_ctypes_is_not_a_pass():
    result = run("import ctypes\nctypes.string_at(0)", RAN, limits=FAST)
    assert (result.status, result.error_type) == ("killed", "SIGSEGV")


# -- attacks: faking a pass --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "program, error_type",
    [
        ("import sys\nsys.exit(0)", "SystemExit"),
        ("raise SystemExit", "SystemExit"),
        ("import os\nos._exit(0)", "EarlyExit"),
        ("class Escape(BaseException):\n    pass\nraise Escape()", "Escape"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
    ],
)
def test_leaving_before_the_tests_is_not_a_pass(program, error_type):
    result = run(program, RAN, limits=FAST)
    assert (result.status, result.error_type) == ("error", error_type)


@pytest.mark.parametrize(
    "program",
    [
        # a fake report on stdout, and a fake frame on every other descriptor, then leave before the tests
        "print('{\"status\": \"passed\"}')\nimport os\nfor fd in range(3, 64):\n"
        "    try:\n        os.write(fd, b'\\x01\\x00\\x00\\x00T')\n    except OSError:\n        pass\nos._exit(0)",
        # the old in-process harness's routes: harmless now, and the failing tests still fail
        "import sys\nsys.audit('cai_sandbox.report', 'passed', '', '')",
        "import sys\nsys._getframe(1).f_locals.clear()",
        "import gc\nfor o in gc.get_objects():\n    pass",
        "import sys\nsys.settrace(lambda *a: None)",
        # reach into this process's copy of the harness: the verdict is not made here
        "import sys\nw = sys.modules['cai_lightning.sandbox.wire']\nw.Endpoint.receive = lambda self: ('names',)",
        "import sys\np = sys.modules['cai_lightning.sandbox.program']\np.ProgramEnd.perform = lambda self, m: True",
        "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})",
    ],
    ids=["fake-reports-then-exit", "audit-report", "frames", "gc", "settrace", "patch-wire", "answer-true",
         "patch-assertion-error"],
)
def test_faking_a_pass_from_the_program_does_not_pass(program):
    result = run(program, RAN, limits=FAST)  # tests that fail: only a forged verdict could pass them
    assert not result.passed, result


def test_patching_builtins_does_not_fool_the_tests():
    program = (
        "import builtins\nclass Never(Exception):\n    pass\n"
        "builtins.AssertionError = Never\nbuiltins.all = lambda *a: True\nbuiltins.len = lambda x: 3\n"
        "__builtins__['sorted'] = lambda x: [1, 2, 3]"
    )
    result = run(program, "assert len([]) == 0\nassert sorted([2, 1]) == [1, 2]\nassert all([False]), 'the tests ran'")
    assert (result.status, result.error_type) == ("failed", "AssertionError") and "the tests ran" in result.message


def test_the_parent_leaks_no_descriptors_threads_or_children():
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    jobs = [("while True:\n    pass", ""), ("print('x' * 10**6)", ""), ("import os\nos._exit(3)", ""), ("x = 1", "assert x == 1")]
    results = run_many(jobs * 2, limits=Limits(timeout_s=1, cpu_s=5), workers=2)
    assert [r.status for r in results] == ["timeout", "passed", "error", "passed"] * 2
    assert len(os.listdir("/proc/self/fd")) == fds and threading.active_count() == threads
    assert _sandbox_processes() == []


def test_messages_are_capped():
    result = run(f"raise ValueError({'v' * 5000!r})")
    assert result.error_type == "ValueError" and len(result.message) == MESSAGE_CHARS


def _sandbox_processes() -> list[str]:
    """Processes left behind: children of this process, or running as a sandbox uid."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            uid = os.stat(f"/proc/{pid}").st_uid
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() or uid >= SANDBOX_UID_BASE:
            left.append(pid)
    return left
