"""The prompt template of `python_code_instructions_18k_alpaca`, defined once.

The Hub dataset's own ``prompt`` column reads::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Output:
    {output}

We train on exactly that layout, with one documented choice: when a row's ``input`` is empty the
``### Input:`` section is left out entirely (about half the Hub rows have no input, and an empty section
is tokens that carry no information). The prompt ends with ``"### Output:\\n"`` so the target starts on a
fresh line and the prompt/target token boundary never falls inside a BPE merge.
"""

from __future__ import annotations

PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

# Bump when the template text changes: it is part of the tokenized-dataset cache key.
TEMPLATE_VERSION = "alpaca-code-v1"


def format_prompt(instruction: str, input: str = "") -> str:
    """The text the model is conditioned on; the target (code + EOS) follows it directly."""
    sections = [PREAMBLE, f"### Instruction:\n{instruction.strip()}"]
    if input.strip():
        sections.append(f"### Input:\n{input.strip()}")
    sections.append("### Output:\n")
    return "\n\n".join(sections)
