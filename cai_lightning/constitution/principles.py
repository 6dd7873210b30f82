"""Constitution files: YAML, one entry per principle.

    principles:
      - name: correctness
        critique: Identify specific ways in which the code is incorrect ...
        revision: Rewrite the code so that it is correct ...
        check: correctness          # optional: a name from checks.CHECKS
        weight: 4                   # optional (default 1): what passing the check adds to the score

Errors name the file and the principle: not valid YAML, a principle missing a field, an unknown check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cai_lightning.constitution.checks import CHECKS
from cai_lightning.errors import ConfigError

DEFAULT_PATH = Path(__file__).with_name("default.yaml")
FIELDS = ("name", "critique", "revision")


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str  # the critique request
    revision: str  # the revision request
    check: str | None = None  # an automatic check grounding the critique, or model critique only
    weight: float = 1.0  # what passing ``check`` adds to a response's score (see stage.score)


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    source: str

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> "Constitution":
        """Read and validate a constitution file; raises :class:`ConfigError` naming file and principle."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as err:
            raise ConfigError(f"constitution {path}: cannot read it: {err}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"constitution {path}: not valid YAML: {err}") from err
        entries = data.get("principles") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"constitution {path}: expected a non-empty list under 'principles'")
        principles, names = [], set()
        for number, entry in enumerate(entries, start=1):
            label = f"constitution {path}: principle {number}"
            if not isinstance(entry, dict):
                raise ConfigError(f"{label}: expected a mapping with {', '.join(FIELDS)}")
            label += f" ({entry.get('name', 'unnamed')})"
            for field in FIELDS:
                if not isinstance(entry.get(field), str) or not entry[field].strip():
                    raise ConfigError(f"{label}: missing or empty field {field!r}")
            unknown = set(entry) - {*FIELDS, "check", "weight"}
            if unknown:
                raise ConfigError(f"{label}: unknown field(s) {', '.join(sorted(unknown))}")
            check = entry.get("check")
            if check is not None and check not in CHECKS:
                raise ConfigError(f"{label}: unknown check {check!r}; known checks: {', '.join(CHECKS)}")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                raise ConfigError(f"{label}: weight must be a positive number, got {weight!r}")
            if entry["name"] in names:
                raise ConfigError(f"{label}: duplicate principle name")
            names.add(entry["name"])
            principles.append(Principle(entry["name"], entry["critique"].strip(), entry["revision"].strip(), check, float(weight)))
        return cls(tuple(principles), str(path))

    @property
    def weights(self) -> dict[str, float]:
        """Check name → weight, over the principles that have a check."""
        return {p.check: p.weight for p in self.principles if p.check}

    def __getitem__(self, name: str) -> Principle:
        for principle in self.principles:
            if principle.name == name:
                return principle
        raise KeyError(name)
