"""Automatic checks of a Python response. Pure functions of the code's *text*: nothing here runs the
code in this process — ``correctness`` runs it in :mod:`cai_lightning.sandbox`, ``style`` hands the text
to ruff (a linter that parses, never executes), the others walk the AST.

Each check returns a list of :class:`Finding`; an empty list means the response satisfies the check.
Code that does not parse is itself a finding (``syntax``), recorded rather than raised.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable

from cai_lightning import sandbox


@dataclass(frozen=True)
class Finding:
    """One violation: which check found it, a message a critic can quote, and the line (1-based, or 0)."""

    check: str
    message: str
    line: int = 0

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def _parse(code: str, check: str) -> tuple[ast.Module | None, list[Finding]]:
    try:
        return ast.parse(code), []
    except SyntaxError as err:
        return None, [Finding(check, f"the code does not parse: {err.msg}", err.lineno or 0)]
    except ValueError as err:  # null bytes
        return None, [Finding(check, f"the code does not parse: {err}")]


def correctness(code: str, tests: str = "", limits: sandbox.Limits = sandbox.Limits(timeout_s=10)) -> list[Finding]:
    """The row's unit tests pass in the sandbox when it has tests; otherwise the code must compile."""
    tree, findings = _parse(code, "correctness")
    if tree is None or not tests.strip():
        return findings
    result = sandbox.run(code, tests, limits=limits)
    if result.passed:
        return []
    detail = f"{result.error_type}: {result.message}" if result.message else (result.error_type or result.status)
    return [Finding("correctness", f"the unit tests do not pass ({result.status}): {detail}"[:400])]


# Calls that run strings as code or shell commands, or load pickles: dangerous with untrusted input.
DANGEROUS_CALLS = {
    "eval": "eval() runs arbitrary code",
    "exec": "exec() runs arbitrary code",
    "os.system": "os.system() runs a shell command",
    "os.popen": "os.popen() runs a shell command",
    "pickle.load": "pickle.load() can run arbitrary code from untrusted data",
    "pickle.loads": "pickle.loads() can run arbitrary code from untrusted data",
    "marshal.loads": "marshal.loads() on untrusted data is unsafe",
    "yaml.load": "yaml.load() without SafeLoader can build arbitrary objects",
}
SECRET_NAME = re.compile(r"(password|passwd|secret|api_?key|token|credential)", re.IGNORECASE)


class _SafetyVisitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def _flag(self, node: ast.AST, message: str) -> None:
        self.findings.append(Finding("safety", message, getattr(node, "lineno", 0)))

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func)
        if name in DANGEROUS_CALLS:
            self._flag(node, DANGEROUS_CALLS[name])
        if name.startswith("subprocess.") and any(
            k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value is True for k in node.keywords
        ):
            self._flag(node, f"{name}(..., shell=True) passes a string to the shell")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str) and node.value.value:
            for target in node.targets:
                name = _dotted(target)
                if SECRET_NAME.search(name):
                    self._flag(node, f"hard-coded credential in {name!r}; read it from the environment or a secret store")
        self.generic_visit(node)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def safety(code: str) -> list[Finding]:
    """No ``eval``/``exec``, shell commands, ``subprocess(..., shell=True)``, unpickling, or hard-coded credentials."""
    tree, findings = _parse(code, "safety")
    if tree is None:
        return findings
    visitor = _SafetyVisitor()
    visitor.visit(tree)
    return visitor.findings


RUFF_RULES = "E,W,F"  # pycodestyle (PEP 8) and pyflakes (unused names, undefined names)


def style(code: str) -> list[Finding]:
    """PEP 8 and pyflakes findings from ruff, run isolated from any project configuration."""
    tree, findings = _parse(code, "style")
    if tree is None:
        return findings
    out = subprocess.run(
        [_ruff_binary(), "check", "--isolated", "--preview", "--select", RUFF_RULES, "--output-format", "json",
         "--stdin-filename", "response.py", "-"],
        input=code, capture_output=True, text=True, timeout=60,
    )
    if out.returncode not in (0, 1):  # 0: clean, 1: findings, else: ruff itself failed
        raise RuntimeError(f"ruff failed: {out.stderr.strip()[:300]}")
    return [Finding("style", f"{d['code']} {d['message']}", d["location"]["row"]) for d in json.loads(out.stdout or "[]")]


def _ruff_binary() -> str:
    """The ruff executable of the installed ``ruff`` package (found even when its venv is not activated)."""
    try:
        from ruff.__main__ import find_ruff_bin

        return find_ruff_bin()
    except (ImportError, FileNotFoundError):
        path = shutil.which("ruff")
        if path is None:
            raise RuntimeError("the style check needs ruff: pip install ruff") from None
        return path


def documentation(code: str) -> list[Finding]:
    """Every function and class carries a docstring."""
    tree, findings = _parse(code, "documentation")
    if tree is None:
        return findings
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and ast.get_docstring(node) is None:
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            findings.append(Finding("documentation", f"{kind} {node.name!r} has no docstring", node.lineno))
    return findings


CHECKS: dict[str, Callable[..., list[Finding]]] = {
    "correctness": correctness,
    "safety": safety,
    "style": style,
    "documentation": documentation,
}
"""Check name (as written in a constitution file) → check."""


def run_check(name: str, code: str, tests: str = "") -> list[Finding]:
    """Run the check called ``name`` on ``code`` (``tests`` matter to ``correctness`` only)."""
    check = CHECKS[name]
    return check(code, tests) if name == "correctness" else check(code)
