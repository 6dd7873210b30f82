"""Corrupt training outputs the way scraped data is corrupted, for the benchmark that compares SFT on
clean, corrupted and constitution-revised data (``bench/constitution_effect.py``).

:func:`corrupt` picks a seeded share of the rows and breaks each one's ``output`` with one of
:data:`KINDS`. Every corruption is a small edit of the source text at a place found through the syntax
tree (or, for syntax errors, the token stream): the rest of the code keeps its layout and comments, so
a corrupted output differs from the clean one in the corruption only.

- ``syntax_error``: drop the colon that ends a block header, or a closing bracket. Does not parse.
- ``wrong_operator``: swap one operator: ``+``/``-`` (not next to a string literal), ``+=``/``-=``,
  ``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``in``/``not in``, ``is``/``is not``, ``and``/``or``.
- ``off_by_one``: a ``range()`` bound, a slice bound, a constant or ``i ± k`` index, or an integer
  constant compared with, ± 1.
- ``missing_return``: the final ``return name`` of a function removed, or the keyword of another
  ``return`` dropped, so that the value is computed and thrown away.
- ``unsafe_call``: a returned expression evaluated from a string, ``return eval("a + b")``, or, for a
  bare name or where ``eval`` would not see the same names (in a nested function, a comprehension),
  passed through ``pickle.loads(pickle.dumps(...))``, the deep copy scraped code uses. The function still works,
  but the safety check flags it. (A shell command, ``os.system`` or ``subprocess(..., shell=True)``,
  would be refused by the sandbox that runs the tests, so the function would not work any more.)

The first three change what the code does or whether it runs; on the shipped tasks, most corrupted
outputs of those kinds fail their unit tests (``tests/test_corruption.py`` measures a sample).

Why one long module: each kind is a small edit, but each needs its own search of the syntax tree or the token
stream; the benchmark draws among all of them, and their tests read them side by side.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import io
import itertools
import random
import re
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cai_lightning.constitution.checks import parse_code

KINDS = ("syntax_error", "wrong_operator", "off_by_one", "missing_return", "unsafe_call")
"""The kinds of corruption, as the log names them."""


@dataclass(frozen=True)
class Edit:
    """One way to corrupt a code: replace ``code[start:end]`` by ``text`` at each of ``changes`` (character
    offsets into the original code, non-overlapping), and what the log says about it."""

    changes: tuple[tuple[int, int, str], ...]
    description: str

    def apply(self, code: str) -> str:
        for start, end, text in sorted(self.changes, reverse=True):  # from the end: offsets stay valid
            code = code[:start] + text + code[end:]
        return code


def corrupt(
    rows: Sequence[dict], fraction: float, seed: int, kinds: Sequence[str] = KINDS
) -> tuple[list[dict], list[dict]]:
    """``rows`` with ``round(fraction * len(rows))`` outputs corrupted, and a log of what was done.

    Pure and seeded: rows are visited in the order of a hash of ``seed`` and their ``task_id`` (else
    instruction and input), never of their position, and each visited row gets one of the ``kinds``
    that applies to its output, kind and place drawn with a generator seeded the same way, until
    enough are corrupted. So the same seed corrupts the same rows the same way whatever their order,
    how a row is corrupted depends on the seed and the row alone, and a larger ``fraction`` corrupts a
    superset. A row whose output none of the kinds applies to (it does not parse, or has nothing to
    break) is passed over.

    Returns the rows in input order (corrupted ones as new dicts with a new ``output``, the others as
    given) and, for each corrupted row in visiting order, ``{"task_id", "kind", "description"}``
    (the description says what changed where, "line 3: `+` → `-`"). Raises ValueError for a
    ``fraction`` outside [0, 1], an unknown kind, or fewer rows that can be corrupted than asked for.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corrupt: fraction must lie in [0, 1], got {fraction!r}")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"corrupt: unknown kind(s) {unknown or list(kinds)!r}; the kinds are {', '.join(KINDS)}")
    wanted = round(fraction * len(rows))
    keys = [_row_key(row) for row in rows]
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{seed}:{keys[i]}".encode()).digest())
    result, log = list(rows), []
    for i in order:
        if len(log) == wanted:
            break
        rng = random.Random(f"{seed}:{keys[i]}")
        found = corrupt_code(rows[i].get("output") or "", rng, kinds)
        if found is None:
            continue
        kind, code, description = found
        result[i] = {**rows[i], "output": code}
        log.append({"task_id": rows[i].get("task_id") or keys[i], "kind": kind, "description": description})
    if len(log) < wanted:
        raise ValueError(f"corrupt: only {len(log)} of {len(rows)} rows can be corrupted, {wanted} asked for")
    return result, log


def _row_key(row: dict) -> str:
    """What identifies a row for the hash: its task id, else its instruction and input (as in
    :func:`cai_lightning.data.records.split_of`)."""
    return row.get("task_id") or row.get("instruction", "") + "\0" + (row.get("input") or "")


def corrupt_code(code: str, rng: random.Random, kinds: Sequence[str] = KINDS) -> tuple[str, str, str] | None:
    """``(kind, corrupted code, description)`` for one of the ``kinds`` that applies to ``code``, the
    kind and the place drawn from ``rng``; None when ``code`` does not parse or none applies."""
    found = _edits(code, kinds, check=False)
    if found is None:
        return None
    tree_before, candidates = found
    while candidates:
        kind = rng.choice(sorted(candidates, key=KINDS.index))
        edits = candidates.pop(kind)
        rng.shuffle(edits)
        # checked one at a time, in a random order: checking every edit first would cost a parse each
        for edit in edits:
            corrupted = edit.apply(code)
            if _changes(corrupted, tree_before, kind == "syntax_error"):
                return kind, corrupted, edit.description
    return None


def edits_of(code: str, kind: str) -> list[Edit]:
    """Every way to corrupt ``code`` with ``kind``, in source order, each checked: a ``syntax_error``
    edit gives code that does not parse, any other gives code that parses to a different syntax tree.
    Empty when ``code`` does not parse."""
    found = _edits(code, [kind], check=True)
    return found[1].get(kind, []) if found is not None else []


def _edits(code: str, kinds: Sequence[str], check: bool) -> tuple[str, dict[str, list[Edit]]] | None:
    """``(dump of code's syntax tree, {kind: its edits, for each kind that has some})``, the edits
    checked as :func:`edits_of` says when ``check``; None when ``code`` does not parse."""
    try:
        tree = parse_code(code)
    except (SyntaxError, ValueError):
        return None
    before, offsets = ast.dump(tree), _Offsets(code)
    found = {}
    for kind in kinds:
        edits = _FINDERS[kind](code, tree, offsets)
        if check:
            edits = [edit for edit in edits if _changes(edit.apply(code), before, kind == "syntax_error")]
        if edits:
            found[kind] = edits
    return before, found


def _changes(code: str, before: str, must_break: bool) -> bool:
    try:
        after = ast.dump(parse_code(code))
    except (SyntaxError, ValueError):
        return must_break
    return not must_break and after != before


_LINE = re.compile(r".*?(?:\r\n|\r|\n)|.+", re.DOTALL)  # the lines `ast` counts; str.splitlines also splits at \f


class _Offsets:
    """Character offsets of the (line, column) positions `ast` gives: 1-based lines, columns in UTF-8
    bytes."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.lines = _LINE.findall(code)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def at(self, line: int, col: int) -> int:
        return self.starts[line - 1] + len(self.lines[line - 1].encode()[:col].decode(errors="replace"))

    def start(self, node: ast.AST) -> int:
        return self.at(node.lineno, node.col_offset)

    def end(self, node: ast.AST) -> int:
        return self.at(node.end_lineno, node.end_col_offset)

    def text(self, node: ast.AST) -> str:
        return self.code[self.start(node) : self.end(node)]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)


# ------------------------------------------------------------------------------------------ syntax_error
_HEADER_END = {tokenize.NEWLINE, tokenize.COMMENT}


def _syntax_errors(code: str, tree: ast.Module, offsets: _Offsets) -> list[Edit]:
    """Drop the ":" ending a block header (the last token of its line), or a closing bracket."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    edits = []
    for token, after in itertools.pairwise(tokens):
        if token.type != tokenize.OP or token.string not in (":", ")", "]", "}"):
            continue
        if token.string == ":" and after.type not in _HEADER_END:
            continue  # a slice, a dict, a lambda, an annotation or a one-line block
        start = offsets.starts[token.start[0] - 1] + token.start[1]  # tokenize counts characters
        what = "the ':' ending the line" if token.string == ":" else f"a closing {token.string!r}"
        edits.append(Edit(((start, start + 1, ""),), f"line {token.start[0]}: removed {what}"))
    return edits


def _outside_fstrings(tree: ast.Module) -> list[ast.AST]:
    """The nodes of ``tree`` but those inside f-strings, whose positions Python 3.11 does not always
    give right."""
    inside = {id(node) for fstring in ast.walk(tree) if isinstance(fstring, ast.JoinedStr)
              for node in ast.walk(fstring) if node is not fstring}
    return [node for node in ast.walk(tree) if id(node) not in inside]


# ---------------------------------------------------------------------------------------- wrong_operator
_SWAPS: dict[type, tuple[type, str, str]] = {  # operator → (its swap, its text as a regex, the swap's text)
    ast.Add: (ast.Sub, r"\+", "-"),
    ast.Sub: (ast.Add, r"-", "+"),
    ast.Lt: (ast.LtE, r"<", "<="),
    ast.LtE: (ast.Lt, r"<=", "<"),
    ast.Gt: (ast.GtE, r">", ">="),
    ast.GtE: (ast.Gt, r">=", ">"),
    ast.Eq: (ast.NotEq, r"==", "!="),
    ast.NotEq: (ast.Eq, r"!=", "=="),
    ast.In: (ast.NotIn, r"in", "not in"),
    ast.NotIn: (ast.In, r"not\s+in", "in"),
    ast.Is: (ast.IsNot, r"is", "is not"),
    ast.IsNot: (ast.Is, r"is\s+not", "is"),
    ast.And: (ast.Or, r"and", "or"),
    ast.Or: (ast.And, r"or", "and"),
}
# What may surround an operator between its operands: brackets, whitespace, line continuations, comments.
_AROUND = r"(?:[\s()\\]|#[^\n]*)*"


def _wrong_operators(code: str, tree: ast.Module, offsets: _Offsets) -> list[Edit]:
    """Swap one binary, augmented, comparison or boolean operator for its near twin."""
    edits = []
    for node in _outside_fstrings(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub) and not _stringy(node):
            edits.append(_swap(offsets, node.op, node.left, node.right))
        elif isinstance(node, ast.AugAssign) and type(node.op) in (ast.Add, ast.Sub):
            edits.append(_swap(offsets, node.op, node.target, node.value, suffix="="))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            pairs = zip(node.ops, operands, operands[1:])
            edits += [_swap(offsets, op, left, right) for op, left, right in pairs if type(op) in _SWAPS]
        elif isinstance(node, ast.BoolOp):
            edits += [_swap(offsets, node.op, a, b) for a, b in zip(node.values, node.values[1:])]
    return sorted((e for e in edits if e is not None), key=lambda e: e.changes[0][0])


def _stringy(node: ast.BinOp) -> bool:
    """Whether an operand is a string literal: ``"a" - name`` is no mistake anyone makes."""
    return any(
        isinstance(side, ast.JoinedStr) or isinstance(side, ast.Constant) and isinstance(side.value, (str, bytes))
        for side in (node.left, node.right)
    )


def _swap(offsets: _Offsets, op: ast.AST, left: ast.AST, right: ast.AST, suffix: str = "") -> Edit | None:
    """The edit swapping ``op``, found in the source between the ``left`` and ``right`` operands."""
    _, pattern, text = _SWAPS[type(op)]
    start, end = offsets.end(left), offsets.start(right)
    found = re.fullmatch(rf"({_AROUND})({pattern}{re.escape(suffix)})({_AROUND})", offsets.code[start:end])
    if found is None:
        return None
    at = start + found.start(2)
    new = text + suffix
    return Edit(((at, start + found.end(2), new),), f"line {offsets.line_of(at)}: `{found[2]}` → `{new}`")


# -------------------------------------------------------------------------------------------- off_by_one
def _off_by_ones(code: str, tree: ast.Module, offsets: _Offsets) -> list[Edit]:
    """One bound ± 1: a ``range()`` argument, a slice bound, a constant or ``i ± k`` index, an integer
    constant in a comparison. Each place gives two edits, + 1 and - 1."""
    places: list[ast.AST] = []
    for node in _outside_fstrings(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
            places += [arg for arg in node.args if not isinstance(arg, ast.Starred)]
        elif isinstance(node, ast.Slice):
            places += [bound for bound in (node.lower, node.upper) if bound is not None]
        elif isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            if _int_value(node.slice) is not None or _shifted(node.slice) is not None:
                places.append(node.slice)
        elif isinstance(node, ast.Compare):
            places += [side for side in (node.left, *node.comparators) if _int_value(side) is not None]
    edits = []
    for place in sorted(places, key=offsets.start):
        before = offsets.text(place)
        for delta in (1, -1):
            after = _plus(place, delta, offsets)
            description = f"line {place.lineno}: `{before}` → `{after}`"
            edits.append(Edit(((offsets.start(place), offsets.end(place), after),), description))
    return edits


def _int_value(node: ast.AST) -> int | None:
    """The value of an integer literal, ``-1`` included (bools are no integers here)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_value(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _shifted(node: ast.AST) -> tuple[ast.AST, int] | None:
    """``(x, k)`` for ``x + k`` or ``(x, -k)`` for ``x - k`` with an integer literal ``k``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        k = _int_value(node.right)
        if k is not None:
            return node.left, k if isinstance(node.op, ast.Add) else -k
    return None


# Expressions that `+ 1` adds to as a whole; a binary operation binding looser than `+` does not.
_TIGHT = (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant, ast.BinOp, ast.UnaryOp)
_LOOSE = (ast.BitOr, ast.BitXor, ast.BitAnd, ast.LShift, ast.RShift)


def _plus(node: ast.AST, delta: int, offsets: _Offsets) -> str:
    """The source of ``node + delta``, written as a person would: ``3`` → ``4``, ``n - 1`` → ``n``."""
    value = _int_value(node)
    if value is not None:
        return str(value + delta)
    shifted = _shifted(node)
    base, k = shifted if shifted is not None else (node, 0)
    text = offsets.text(base)
    if not isinstance(base, _TIGHT) or isinstance(base, ast.BinOp) and isinstance(base.op, _LOOSE):
        text = f"({text})"  # `a if c else b` + 1 would add to b only
    k += delta
    return text if k == 0 else f"{text} + {k}" if k > 0 else f"{text} - {-k}"


# ---------------------------------------------------------------------------------------- missing_return
def _missing_returns(code: str, tree: ast.Module, offsets: _Offsets) -> list[Edit]:
    """For each ``return value`` of a function that returns values (not a generator, not ``__init__``):
    the statement removed when it is the function's last and returns a bare name, else its keyword
    dropped, so that the value is computed and thrown away."""
    edits = []
    for function, node in _value_returns(tree):
        start, value_start = offsets.start(node), offsets.start(node.value)
        line = offsets.lines[node.lineno - 1]
        alone = node.lineno == node.end_lineno and line.strip() == offsets.text(node)
        if node is function.body[-1] and isinstance(node.value, ast.Name) and alone and len(function.body) > 1:
            first = offsets.starts[node.lineno - 1]
            edit = Edit(((first, first + len(line), ""),), f"line {node.lineno}: removed the final `{line.strip()}`")
        else:
            description = f"line {node.lineno}: `return` dropped from `{_short(offsets.text(node))}`"
            edit = Edit(((start, value_start, ""),), description)
        edits.append(edit)
    return edits


def _value_returns(tree: ast.Module) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.Return]]:
    """``(function, return statement)`` for every ``return value`` (not ``return None``) of a function
    that is not a generator or ``__init__``, in source order."""
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "__init__":
            continue
        own = list(_own_nodes(function))
        if any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in own):
            continue
        found += [
            (function, node) for node in own
            if isinstance(node, ast.Return) and node.value is not None
            and not (isinstance(node.value, ast.Constant) and node.value.value is None)
        ]
    return sorted(found, key=lambda pair: (pair[1].lineno, pair[1].col_offset))


def _own_nodes(function: ast.AST):
    """The nodes of ``function``'s body that belong to it, not to a function, lambda or class inside it."""
    stack = list(function.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))


# ------------------------------------------------------------------------------------------- unsafe_call
# What `eval` of the expression's text inside the function would not see as the function does: names
# of an enclosing function (comprehensions and lambdas are scopes of their own), `super()`'s cell,
# name-mangled attributes.
_EVAL_BLIND = (
    ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.NamedExpr, ast.Await, ast.Starred
)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _unsafe_calls(code: str, tree: ast.Module, offsets: _Offsets) -> list[Edit]:
    """For each ``return value`` of a function: ``return eval("value")`` for an expression ``eval`` sees
    as the function does, else (a bare name, say) ``return pickle.loads(pickle.dumps(value))`` with
    ``import pickle`` added; not for a literal, ``self``, a lambda, a generator or a function's own
    function."""
    nested = {
        id(inner) for outer in ast.walk(tree) if isinstance(outer, (*_FUNCTIONS, ast.Lambda))
        for inner in ast.walk(outer) if inner is not outer and isinstance(inner, _FUNCTIONS)
    }
    top = _import_offset(tree, offsets)
    imported = any(
        isinstance(s, ast.Import) and any(a.name == "pickle" and a.asname is None for a in s.names) for s in tree.body
    )
    edits = []
    for function, node in _value_returns(tree):
        value, text = node.value, offsets.text(node.value)
        where = (offsets.start(value), offsets.end(value))
        if isinstance(value, ast.Constant) or isinstance(value, ast.Name) and (
            value.id in ("self", "cls") or value.id in _local_callables(function)
        ):
            continue  # `eval("0")` is no code anyone writes; a copy of `self` is another object; a local
            # function or class cannot be pickled
        if not isinstance(value, ast.Name) and id(function) not in nested and _eval_sees(value):
            source = ast.unparse(value)
            if "\n" not in source:
                call = f"eval({source!r})"
                edits.append(Edit(((*where, call),), f"line {node.lineno}: `{_short(text)}` → `{_short(call)}`"))
                continue
        if isinstance(value, (ast.Lambda, ast.GeneratorExp)):
            continue  # pickle cannot copy those: the function would stop working
        call = f"pickle.loads(pickle.dumps({text}))"
        changes = ((*where, call),) if imported else ((top, top, "import pickle\n"), (*where, call))
        edits.append(Edit(changes, f"line {node.lineno}: `{_short(text)}` → `{_short(call)}`"))
    return edits


def _local_callables(function: ast.AST) -> set[str]:
    """Names ``function`` binds to a function, class or lambda of its own: pickle cannot copy those."""
    names = {node.name for node in _own_nodes(function) if isinstance(node, (*_FUNCTIONS, ast.ClassDef))}
    for node in _own_nodes(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _eval_sees(value: ast.AST) -> bool:
    for node in ast.walk(value):
        if isinstance(node, _EVAL_BLIND):
            return False
        if isinstance(node, ast.Name) and node.id in ("super", "__class__"):
            return False
        if isinstance(node, ast.Attribute) and node.attr.startswith("__") and not node.attr.endswith("__"):
            return False
    return True


def _import_offset(tree: ast.Module, offsets: _Offsets) -> int:
    """Where a new top-level import goes: before the first statement that is not the module docstring or
    a ``from __future__`` import."""
    for k, statement in enumerate(tree.body):
        docstring = k == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
            and isinstance(statement.value.value, str)
        if not docstring and not (isinstance(statement, ast.ImportFrom) and statement.module == "__future__"):
            return offsets.starts[statement.lineno - 1]
    return len(offsets.code)  # no function either: nothing will be imported


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


_FINDERS: dict[str, Callable[[str, ast.Module, _Offsets], list[Edit]]] = {
    "syntax_error": _syntax_errors,
    "wrong_operator": _wrong_operators,
    "off_by_one": _off_by_ones,
    "missing_return": _missing_returns,
    "unsafe_call": _unsafe_calls,
}
