"""The constitution file: its principles, loading and validation."""

import pytest

from cai_lightning.constitution import DEFAULT_PATH, Constitution
from cai_lightning.errors import ConfigError


def test_default_constitution_covers_the_required_principles():
    constitution = Constitution.load(DEFAULT_PATH)
    checks = {p.name: p.check for p in constitution.principles}
    assert checks == {
        "correctness": "correctness", "safety": "safety", "style": "style", "documentation": "documentation",
        "clarity": None, "efficiency": None,
    }
    assert "incorrect" in constitution["correctness"].critique


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("principles: [", "not valid YAML"),
        ("principles: []", "non-empty list under 'principles'"),
        ("principles:\n  - name: x\n    critique: c\n", "principle 1 (x): missing or empty field 'revision'"),
        ("principles:\n  - name: x\n    critique: c\n    revision: r\n    check: pep8\n", "unknown check 'pep8'"),
        ("principles:\n  - {name: x, critique: c, revision: r, severity: 2}\n", "unknown field(s) severity"),
        ("principles:\n  - {name: x, critique: c, revision: r, weight: -1}\n", "weight must be a positive number"),
    ],
)
def test_bad_constitution_files_name_file_and_principle(tmp_path, text, expected):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)) as err:
        Constitution.load(path)
    assert expected in str(err.value)

