"""The critique and revision prompts, and reading code back out of a revision.

Both prompts extend the dataset's own template (``cai_lightning.prompts``) with the response under review,
the row's unit tests that are shown to the critic (correctness only; the others are held back for the
gate), the findings of the principle's automatic check (quoted, so that even a weak critic is grounded in
facts), and the principle's request::

    Below is an instruction that describes a task, and a response to review. ...

    ### Instruction:
    {instruction}

    ### Input:                       (left out when empty)
    {input}

    ### Response:
    {response}

    ### Unit tests (more are held back):   (correctness only, when the row has tests)
    assert add(1, 2) == 3

    ### Automatic check (style):     (left out for principles without a check)
    - line 1: F401 `os` imported but unused

    ### Critique request:
    {principle.critique}

    ### Critique:
    {critique}                       (the revision prompt goes on from here)

    ### Revision request:
    {principle.revision} Reply with the whole revised code in one ```python block, without tests or explanations.

    ### Revision:
"""

from __future__ import annotations

import re

from cai_lightning.constitution.checks import Finding, UnitTests
from cai_lightning.constitution.principles import Principle
from cai_lightning.generation import FENCE_OPENING

REVIEW_PREAMBLE = (
    "Below is an instruction that describes a task, and a response to review. "
    "Critique the response as requested, then revise it."
)
MAX_FINDINGS = 10  # quoted per prompt; the rest are summarised as a count
REPLY_FORMAT = "Reply with the whole revised code in one ```python block, without tests or explanations."
"""Added to every revision request: a chat model otherwise explains first and appends unit tests of its own,
and its reply runs into the token limit before its code block closes."""


def _sections(
    instruction: str, input: str, response: str, principle: Principle, findings: list[Finding], tests: str | UnitTests
) -> list[str]:
    sections = [REVIEW_PREAMBLE, f"### Instruction:\n{instruction.strip()}"]
    if input.strip():
        sections.append(f"### Input:\n{input.strip()}")
    sections.append(f"### Response:\n{response.rstrip()}")
    tests = UnitTests.of(tests)
    if principle.check == "correctness" and tests.shown.strip():
        held = " (more are held back)" if tests.held_back else ""
        sections.append(f"### Unit tests{held}:\n{tests.shown.strip()}")
    if principle.check:
        lines = [f"- {finding}" for finding in findings[:MAX_FINDINGS]]
        if len(findings) > MAX_FINDINGS:
            lines.append(f"- ... and {len(findings) - MAX_FINDINGS} more")
        sections.append(f"### Automatic check ({principle.check}):\n" + ("\n".join(lines) or "- no findings"))
    sections.append(f"### Critique request:\n{principle.critique}")
    return sections


def critique_prompt(
    instruction: str, input: str, response: str, principle: Principle, findings: list[Finding], tests: str | UnitTests = ""
) -> str:
    """The prompt whose completion is the critique of ``response`` under ``principle``. ``tests``: the
    row's tests; only their shown part is quoted, and only under a principle checked by ``correctness``."""
    return "\n\n".join([*_sections(instruction, input, response, principle, findings, tests), "### Critique:\n"])


def revision_prompt(
    instruction: str, input: str, response: str, principle: Principle, findings: list[Finding], critique: str,
    tests: str | UnitTests = "",
) -> str:
    """The prompt whose completion is a revised response: the critique prompt, the critique, the request."""
    return "\n\n".join(
        [
            *_sections(instruction, input, response, principle, findings, tests),
            f"### Critique:\n{critique.strip()}",
            f"### Revision request:\n{principle.revision} {REPLY_FORMAT}",
            "### Revision:\n",
        ]
    )


_FENCE = re.compile(FENCE_OPENING + r"(.*?)(?:```|\Z)", re.DOTALL)  # an unclosed block: to the end


def extract_code(completion: str) -> str:
    """The code of a revision: the first fenced block if there is one, else the text up to the next
    ``### `` section header a model may go on to write; trailing blank space trimmed, one final newline."""
    fenced = _FENCE.search(completion)
    code = fenced.group(1) if fenced else re.split(r"^### ", completion, maxsplit=1, flags=re.MULTILINE)[0]
    code = code.rstrip()
    return code + "\n" if code else ""

