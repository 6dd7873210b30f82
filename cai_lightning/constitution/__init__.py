"""The constitution: written principles, each with a critique request, a revision request and optionally
an automatic check that grounds the critique in facts (tests run in the sandbox, an AST safety scan, a
real linter, a docstring scan)."""

from cai_lightning.constitution.checks import CHECKS, Finding, run_check
from cai_lightning.constitution.principles import DEFAULT_PATH, Constitution, Principle

__all__ = ["CHECKS", "DEFAULT_PATH", "Constitution", "Finding", "Principle", "run_check"]
