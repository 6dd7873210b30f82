"""Decoding pieces shared by every model that generates here: the fine-tuned model (evaluation, ``predict``,
the sample callback) and the constitution's critic.

* :class:`TopKTopPSampler` draws the next token (temperature, top-k, top-p) inside ``generate``'s logits
  processors, so that ``generate`` runs greedy and takes the draw. With one ``torch.Generator`` per prompt,
  each prompt's samples depend on its own seed only, not on which prompts share its batch.
* :class:`FencedBlockEnd` stops a sequence once its reply holds a whole fenced code block: when only that
  block is scored, what a model writes after it is decoding time spent for nothing.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, StoppingCriteria

# How a fenced Python block opens in a reply; ``constitution.prompts.extract_code`` reads code from the first one.
FENCE_OPENING = r"```(?:python|py)?[ \t]*\n"
# A reply's first fenced Python block, closed: what ``extract_code`` takes when the reply has one.
FENCED_BLOCK = re.compile(FENCE_OPENING + r".*?```", re.DOTALL)


class TopKTopPSampler(LogitsProcessor):
    """Temperature, top-k and top-p (nucleus) sampling, drawn among the ``top_k`` best tokens only.

    ``generate(do_sample=True)`` sorts the whole vocabulary for top-p and draws with ``torch.multinomial``
    over all of it: on a CPU that is ~2 ms of a ~7 ms decoding step of the offline critic at batch 32,
    more than its two attention layers. The same distribution is drawn here from the ``top_k`` best
    logits alone. The result is a score row that is ``-inf`` everywhere but at the drawn token, so
    ``generate`` is run greedy (``do_sample=False``) and its argmax takes the draw; processors the model's
    generation config adds (repetition penalty, banned words, ...) run before this one.

    Args:
        temperature: Divides the logits.
        top_k: How many of the best tokens can be drawn; 0 for the whole vocabulary.
        top_p: The smallest set of best tokens whose probability reaches ``top_p`` is kept.
        generators: One per prompt, for batches whose rows are each prompt's ``rows_per_generator`` rows
            in a row (``generate``'s order): each prompt's rows are drawn from its own generator, so what it
            samples does not depend on the other prompts of the batch. ``None``: the global generator.
        rows_per_generator: Rows per prompt (its ``n`` samples).
    """

    def __init__(
        self, temperature: float, top_k: int, top_p: float,
        generators: Sequence[torch.Generator] | None = None, rows_per_generator: int = 1,
    ) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.generators, self.rows_per_generator = generators, rows_per_generator

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k or scores.size(-1), scores.size(-1))
        best, tokens = scores.topk(k, dim=-1)  # (B, k), best first
        probs = (best / self.temperature).softmax(-1)
        # a token is kept if the tokens better than it hold less than top_p: the best one always is
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p, 0.0)
        if self.generators is None:
            picks = torch.multinomial(probs, 1)  # multinomial renormalises
        else:
            n = self.rows_per_generator
            if len(self.generators) * n != probs.size(0):
                raise ValueError(f"{len(self.generators)} generators x {n} rows for a batch of {probs.size(0)} rows")
            picks = torch.cat([
                torch.multinomial(probs[i * n : (i + 1) * n].cpu(), 1, generator=generator)
                for i, generator in enumerate(self.generators)
            ]).to(probs.device)
        drawn = tokens.gather(-1, picks)
        return torch.full_like(scores, float("-inf")).scatter_(-1, drawn, 0.0)


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed (draws are made on the CPU, so a seed means the same on any device)."""
    return [torch.Generator().manual_seed(seed) for seed in seeds]


class FencedBlockEnd(StoppingCriteria):
    """Finished: the rows whose new text (after the first ``prompt_length`` tokens) holds a closed fenced
    Python block (:data:`FENCED_BLOCK`). ``generate`` pads a finished row from then on and stops when every
    row is finished; the code taken from such a reply (its first fenced block) is what the whole reply
    would have given.

    Each step decodes the new tokens of the rows not yet finished (a fence can span tokens): a fraction of
    a millisecond a row, little beside a forward pass.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.done: torch.Tensor | None = None  # (B,) bool

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.done is None or self.done.size(0) != input_ids.size(0):
            self.done = torch.zeros(input_ids.size(0), dtype=torch.bool)
        new = input_ids[:, self.prompt_length :].tolist()
        for row in (~self.done).nonzero().flatten().tolist():
            text = self.tokenizer.decode(new[row], skip_special_tokens=True)
            self.done[row] = FENCED_BLOCK.search(text) is not None
        return self.done.to(input_ids.device)
