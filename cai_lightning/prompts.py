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

An instruct model (SmolLM2-135M-Instruct, say) was trained to answer inside its chat template, so with
``data.prompt_style: chat`` that same text becomes the one user turn of the tokenizer's chat template,
and the code is the assistant's answer: the prompt ends with the template's generation prompt
(``<|im_start|>assistant\n``) and the target with the tokenizer's EOS (``<|im_end|>``), which is how
the template closes a turn. Fine-tuning then starts from what the model already does, and the
un-fine-tuned model is scored on the prompt it knows.
"""

from __future__ import annotations

from typing import Literal

from cai_lightning.errors import ConfigError

PromptStyle = Literal["alpaca", "chat"]

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


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as the one user turn of ``tokenizer``'s chat template, ending where the answer starts."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def check_prompt_style(style: PromptStyle, tokenizer) -> None:
    """Raise :class:`ConfigError` when ``style`` cannot be used with ``tokenizer`` (None: a BPE trained here)."""
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "data.prompt_style is chat, but the tokenizer has no chat template "
            f"({'a BPE trained on the data' if tokenizer is None else type(tokenizer).__name__}): use an instruct "
            "model as model.pretrained (e.g. smollm2-135m-instruct), or data.prompt_style: alpaca"
        )


def styled_prompt(style: PromptStyle, tokenizer, instruction: str, input: str = "") -> str:
    """The prompt the policy sees in ``style``: the dataset's template, as is or inside the chat template."""
    text = format_prompt(instruction, input)
    return chat_prompt(tokenizer, text) if style == "chat" else text
